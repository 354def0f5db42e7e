"""Kernel builds of llama.cpp side by side: find the builds already made (``tuner.builds.buildmake``
makes them), probe what each library reports, and pick one for a worker.

On CUDA the kernel choice (cuBLAS or MMQ) is a compile-time option, so each choice is its own
build under ``<builds_dir>/<variant>/`` (``lib/``, ``bin/llama-bench``, ``build.json``). The one
installed llama-cpp-python package drives any of them through ``LLAMA_CPP_LIB_PATH``, one build
per process, which is why a build must come from the same version as the installed package: its
ctypes signatures have to match the library. The library is only ever loaded in a subprocess.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tuner.builds.buildinfo import BuildFlags, parse_system_info, variant_of
from tuner.errors import BadInput, EnvironmentUnfit, TunerError
from tuner.machine.children import popen_kwargs
from tuner.specs import Frozen

VARIANTS: dict[str, list[str]] = {
    "default": ["-DGGML_CUDA=on"],
    "force-cublas": ["-DGGML_CUDA=on", "-DGGML_CUDA_FORCE_CUBLAS=on"],
    "force-mmq": ["-DGGML_CUDA=on", "-DGGML_CUDA_FORCE_MMQ=on"],
    "cpu": [],
}
INSTALLED = "installed"  # the pseudo-build: the installed package's own lib folder
PROBE_CODE = "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"


class BuildRecord(Frozen):
    """The contents of ``build.json``: how a build was made, and what its library reported."""

    variant: str
    version: str
    cmake_args: list[str]
    cuda_arch: str | None
    source: str
    source_sha256: str
    started: str
    finished: str
    duration_s: float
    system_info: str
    flags_summary: str
    lib: str = "lib"
    bench: str | None = "bin/llama-bench"
    server: str | None = None  # bin/llama-server where `tuner build --server` made it


class BuildInfo(Frozen):
    """A build a worker can load: ``lib_dir`` goes into ``LLAMA_CPP_LIB_PATH``."""

    name: str
    variant: str | None  # None for the installed package until its library is probed
    lib_dir: str
    bench_bin: str | None
    version: str
    server_bin: str | None = None
    cmake_args: list[str] = []
    cuda_arch: str | None = None
    created: str | None = None
    flags_summary: str | None = None


def installed_version() -> str:
    """The installed llama-cpp-python version, read from its metadata (nothing is loaded)."""
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        raise EnvironmentUnfit("llama-cpp-python is not installed",
                               hint="pip install llama-cpp-python") from None


def probe_library(lib_dir: Path) -> str:
    """The system-info text of the llama.cpp library in ``lib_dir``, loaded by the installed
    llama_cpp package in a child process (a library that crashes on load takes only that)."""
    if not (lib_dir / "libllama.so").is_file():
        raise EnvironmentUnfit(f"no libllama.so in {lib_dir}")
    env = {**os.environ, "LLAMA_CPP_LIB_PATH": str(lib_dir.resolve())}
    try:
        proc = subprocess.run([sys.executable, "-c", PROBE_CODE], env=env, capture_output=True,
                              text=True, errors="replace", timeout=180, **popen_kwargs())
    except subprocess.TimeoutExpired:
        raise EnvironmentUnfit(f"loading the library in {lib_dir} took over 180 s") from None
    if proc.returncode != 0 or not proc.stdout.strip():
        why = next((x.strip() for x in reversed(proc.stderr.splitlines()) if x.strip()),
                   f"exit {proc.returncode}")
        raise EnvironmentUnfit(f"cannot load the llama.cpp library in {lib_dir}: {why}")
    return proc.stdout.strip()


def summarize(flags: BuildFlags) -> str:
    """One line naming what a library was built with, for listings."""
    parts = [variant_of(flags)]
    if flags.cuda:
        parts.append(f"archs {','.join(flags.archs) or '?'}")
        parts.append("graphs" if flags.cuda_graphs else "no graphs")
        pairs = ",".join(f"{k}-{v}" for k, v in flags.fa_quants)
        parts.append("fa all quants" if flags.fa_all_quants else f"fa {pairs or 'default'}")
    return ", ".join(parts)


def _installed_lib_dir() -> Path | None:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "lib"


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def discover_builds(builds_dir: Path = Path("builds"),
                    report: Callable[[str], None] | None = None) -> list[BuildInfo]:
    """The installed package's own library, then every ``<builds_dir>/*/build.json``. Broken
    records are skipped and reported (a note on stderr unless ``report`` is given: a message to
    the user, not a Python warning, which ``PYTHONWARNINGS=error`` would turn into a crash)."""
    report = report or _note
    found: list[BuildInfo] = []
    lib = _installed_lib_dir()
    # A package installed without its libraries (LLAMA_BUILD=OFF) drives `tuner build` builds only.
    if lib is not None and (lib / "libllama.so").exists():
        found.append(BuildInfo(name=INSTALLED, variant=None, lib_dir=str(lib), bench_bin=None,
                               version=installed_version()))
    for path in sorted(builds_dir.glob("*/build.json")):
        if path.parent.name.startswith(".") or path.parent.name == INSTALLED:
            continue
        try:
            found.append(_info(path.parent, BuildRecord.model_validate_json(path.read_text())))
        except (OSError, ValidationError) as exc:
            first = str(exc).splitlines()[0]
            report(f"skipping the broken build record {path}: {first}; rebuild it with "
                   f"tuner build --variant {path.parent.name}")
    return found


def _info(folder: Path, record: BuildRecord) -> BuildInfo:
    bench = folder / record.bench if record.bench else None
    server = folder / record.server if record.server else None
    return BuildInfo(name=folder.name, variant=record.variant, lib_dir=str(folder / record.lib),
                     bench_bin=str(bench) if bench and bench.is_file() else None,
                     server_bin=str(server) if server and server.is_file() else None,
                     version=record.version, cmake_args=record.cmake_args,
                     cuda_arch=record.cuda_arch, created=record.finished,
                     flags_summary=record.flags_summary)


def resolve_build(name: str, builds_dir: Path = Path("builds")) -> BuildInfo:
    """The build called ``name``, if the installed package can drive it."""
    builds = {b.name: b for b in discover_builds(builds_dir)}
    if name not in builds:
        hint = f"tuner build --variant {name}" if name in VARIANTS else None
        raise BadInput(f"unknown build {name!r} in {builds_dir} "
                       f"(available: {', '.join(builds) or 'none'})", hint=hint)
    build, version = builds[name], installed_version()
    if build.version != version:
        raise EnvironmentUnfit(f"build {name!r} is llama-cpp-python {build.version}, installed "
                               f"is {version}: the ctypes signatures must match",
                               hint=f"rebuild it: tuner build --variant {build.variant}")
    if not (Path(build.lib_dir) / "libllama.so").is_file():
        raise EnvironmentUnfit(f"build {name!r} has no libllama.so in {build.lib_dir}",
                               hint=f"rebuild it: tuner build --variant {build.variant}")
    return build


def list_builds(builds_dir: Path = Path("builds")) -> list[dict[str, Any]]:
    """Every build with the flags its library reports now, for ``tuner build --list``."""
    installed = installed_version()
    rows: list[dict[str, Any]] = []
    for build in discover_builds(builds_dir):
        row: dict[str, Any] = {**build.model_dump(), "matches_installed":
                               build.version == installed, "reported_variant": None,
                               "flags": None, "error": None}
        try:
            flags = parse_system_info(probe_library(Path(build.lib_dir)))
            row.update(reported_variant=variant_of(flags), flags_summary=summarize(flags),
                       flags=flags.model_dump(exclude={"raw"}))
        except TunerError as exc:
            row["error"] = exc.message
        rows.append(row)
    return rows
