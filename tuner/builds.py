"""Kernel builds of llama.cpp side by side: build one variant from the llama-cpp-python sdist,
find the builds already made, and pick one for a worker.

On CUDA the kernel choice (cuBLAS or MMQ) is a compile-time option, so each choice is its own
build under ``<builds_dir>/<variant>/`` (``lib/``, ``bin/llama-bench``, ``build.json``). The one
installed llama-cpp-python package drives any of them through ``LLAMA_CPP_LIB_PATH``, one build
per process, which is why a build must come from the same version as the installed package: its
ctypes signatures have to match the library. The library is only ever loaded in a subprocess.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
import warnings
from datetime import datetime, timezone
from email.parser import HeaderParser
from pathlib import Path
from typing import Any, Callable, Literal, overload

from pydantic import ValidationError

from tuner.buildinfo import BuildFlags, parse_system_info, variant_of
from tuner.errors import BadInput, EnvironmentUnfit, TunerError
from tuner.specs import Frozen

VARIANTS: dict[str, list[str]] = {
    "default": ["-DGGML_CUDA=on"],
    "force-cublas": ["-DGGML_CUDA=on", "-DGGML_CUDA_FORCE_CUBLAS=on"],
    "force-mmq": ["-DGGML_CUDA=on", "-DGGML_CUDA_FORCE_MMQ=on"],
    "cpu": [],
}
INSTALLED = "installed"  # the pseudo-build: the installed package's own lib folder
TARGETS = ("llama", "llama-bench")  # libllama pulls in libggml* and the backends it links
# Libraries land in <cmake>/bin next to the executables (CMAKE_LIBRARY_OUTPUT_DIRECTORY there).
# RPATH $ORIGIN finds the sibling libggml*; $ORIGIN/../lib lets bin/llama-bench find lib/.
BASE_CMAKE_ARGS = [
    "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TOOLS=ON", "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
    "-DCMAKE_INSTALL_RPATH=$ORIGIN;$ORIGIN/../lib",
]
DEFAULT_NVCC = Path("/usr/local/cuda/bin/nvcc")  # used when nvcc is not on PATH
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


class BuildInfo(Frozen):
    """A build a worker can load: ``lib_dir`` goes into ``LLAMA_CPP_LIB_PATH``."""

    name: str
    variant: str | None  # None for the installed package until its library is probed
    lib_dir: str
    bench_bin: str | None
    version: str
    cmake_args: list[str] = []
    cuda_arch: str | None = None
    created: str | None = None
    flags_summary: str | None = None


class BuildPlan(Frozen):
    """What ``build_variant`` would do, returned by a dry run."""

    variant: str
    version: str
    source: str
    staging_dir: str
    final_dir: str
    cmake_args: list[str]
    cuda_arch: str | None
    commands: list[list[str]]

    def shell_lines(self) -> list[str]:
        """The commands as a shell would take them, for printing."""
        return [shlex.join(c) for c in self.commands]


def installed_version() -> str:
    """The installed llama-cpp-python version, read from its metadata (nothing is loaded)."""
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        raise EnvironmentUnfit("llama-cpp-python is not installed",
                               hint="pip install llama-cpp-python") from None


def sdist_version(path: Path) -> str:
    return _sdist_meta(path)[0]


def _sdist_meta(path: Path) -> tuple[str, str]:
    """(version, top folder) from the sdist's top-level PKG-INFO, streaming the archive."""
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                parts = member.name.strip("/").split("/")
                if len(parts) == 2 and parts[1] == "PKG-INFO" and member.isfile():
                    data = tar.extractfile(member)
                    assert data is not None
                    headers = HeaderParser().parsestr(data.read().decode("utf-8", "replace"))
                    if headers.get("Version"):
                        return headers["Version"].strip(), parts[0]
    except (OSError, tarfile.TarError) as exc:
        raise BadInput(f"cannot read source archive {path}: {exc}") from None
    raise BadInput(f"{path} has no PKG-INFO with a Version: not a llama-cpp-python sdist")


def _check_request(variant: str, cuda_arch: str | None) -> str | None:
    if variant not in VARIANTS:
        raise BadInput(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
    if cuda_arch is None:
        return None
    if not VARIANTS[variant]:
        raise BadInput(f"--cuda-arch applies to CUDA variants, not {variant!r}")
    if not re.fullmatch(r"[0-9a-z_;,-]+", cuda_arch):
        raise BadInput(f"bad CUDA architecture list {cuda_arch!r} (for example 90 or 86;90)")
    return cuda_arch.replace(",", ";")


def plan_build(variant: str, *, source: Path | None, builds_dir: Path = Path("builds"),
               cuda_arch: str | None = None, jobs: int | None = None) -> BuildPlan:
    """Check the request and lay out the commands, without running anything."""
    arch = _check_request(variant, cuda_arch)
    version = installed_version()
    commands: list[list[str]] = []
    if source is not None:
        if not source.is_file():
            raise BadInput(f"source archive {source} does not exist")
        src_version, top = _sdist_meta(source)
        if src_version != version:
            raise BadInput(f"source is llama-cpp-python {src_version}, installed is {version}: "
                           "the ctypes signatures must match")
    else:
        cache = builds_dir / ".sdist"
        source, top = cache / f"llama_cpp_python-{version}.tar.gz", f"llama_cpp_python-{version}"
        commands.append([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                         ":all:", "--dest", str(cache), f"llama-cpp-python=={version}"])
    staging = builds_dir / f".{variant}.partial"
    cmake_dir = staging / "cmake"
    args = BASE_CMAKE_ARGS + VARIANTS[variant]
    if arch:
        args.append(f"-DCMAKE_CUDA_ARCHITECTURES={arch}")
    commands += [
        ["cmake", "-S", str(staging / "src" / top / "vendor" / "llama.cpp"), "-B", str(cmake_dir),
         "-G", "Ninja", *args],
        ["cmake", "--build", str(cmake_dir), "--target", "help"],
        ["cmake", "--build", str(cmake_dir), "--target", *TARGETS,
         "-j", str(jobs or os.cpu_count() or 1)],
    ]
    return BuildPlan(variant=variant, version=version, source=str(source),
                     staging_dir=str(staging), final_dir=str(builds_dir / variant),
                     cmake_args=args, cuda_arch=arch, commands=commands)


@overload
def build_variant(variant: str, *, source: Path | None, builds_dir: Path = ...,
                  cuda_arch: str | None = ..., jobs: int | None = ..., dry_run: Literal[True],
                  log: Callable[[str], None] = ...) -> BuildPlan: ...
@overload
def build_variant(variant: str, *, source: Path | None, builds_dir: Path = ...,
                  cuda_arch: str | None = ..., jobs: int | None = ...,
                  dry_run: Literal[False] = ..., log: Callable[[str], None] = ...) -> BuildInfo: ...
def build_variant(variant: str, *, source: Path | None, builds_dir: Path = Path("builds"),
                  cuda_arch: str | None = None, jobs: int | None = None, dry_run: bool = False,
                  log: Callable[[str], None] = lambda _line: None) -> BuildInfo | BuildPlan:
    """Build one kernel variant into ``<builds_dir>/<variant>``. The work happens in a hidden
    staging folder that is renamed into place only once the library has loaded and reported the
    expected kernel choice, so a failed build never looks usable (its tree stays for reading)."""
    plan = plan_build(variant, source=source, builds_dir=builds_dir, cuda_arch=cuda_arch,
                      jobs=jobs)
    if dry_run:
        return plan
    env = _preflight(variant)
    started, t0 = _now(), time.monotonic()
    staging, final = Path(plan.staging_dir), Path(plan.final_dir)
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "src").mkdir(parents=True)
    fail_hint = f"the build tree is kept in {staging}"
    commands = list(plan.commands)
    if source is None:
        _fetch_sdist(commands.pop(0), Path(plan.source), log)
    sha256 = _sha256(Path(plan.source))
    log(f"extracting {plan.source}")
    with tarfile.open(plan.source, "r:*") as tar:
        tar.extractall(staging / "src", **({"filter": "data"} if hasattr(tarfile, "data_filter")
                                           else {}))
    configure, help_cmd, build = commands
    _run(configure, log, "cmake configure", fail_hint, env)
    targets = _run(help_cmd, lambda _l: None, "cmake target list", fail_hint, env)
    missing = [t for t in TARGETS if not re.search(rf"^{re.escape(t)}: ", targets, re.M)]
    if missing:
        raise TunerError(f"this llama.cpp has no target {', '.join(missing)}", hint=fail_hint)
    _run(build, log, "cmake build", fail_hint, env)
    bench = _collect(staging / "cmake" / "bin", staging / "lib", staging / "bin")
    system_info = probe_library(staging / "lib")
    flags = parse_system_info(system_info)
    if variant_of(flags) != variant:
        raise TunerError(f"built {variant!r} but its library reports {variant_of(flags)!r}",
                         hint=fail_hint)
    record = BuildRecord(
        variant=variant, version=plan.version, cmake_args=plan.cmake_args,
        cuda_arch=plan.cuda_arch,
        source=str(plan.source), source_sha256=sha256, started=started, finished=_now(),
        duration_s=round(time.monotonic() - t0, 1), system_info=system_info,
        flags_summary=summarize(flags), bench="bin/llama-bench" if bench else None)
    (staging / "build.json").write_text(record.model_dump_json(indent=2) + "\n")
    shutil.rmtree(staging / "src")
    shutil.rmtree(staging / "cmake")
    old = staging.with_name(f".{variant}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    log(f"built {variant} in {record.duration_s:.0f}s: {final}")
    return _info(final, record)


def _preflight(variant: str) -> dict[str, str]:
    """The environment the build commands run in; refuses a machine that cannot build."""
    for tool in ("cmake", "ninja"):
        if shutil.which(tool) is None:
            raise EnvironmentUnfit(f"{tool} is not on PATH; building llama.cpp needs it")
    env = dict(os.environ)
    if VARIANTS[variant] and not (shutil.which("nvcc") or env.get("CUDACXX")):
        if not DEFAULT_NVCC.is_file():
            raise EnvironmentUnfit(f"variant {variant!r} needs the CUDA toolkit and no nvcc "
                                   "was found", hint="put nvcc on PATH or set CUDACXX")
        env["CUDACXX"] = str(DEFAULT_NVCC)
    return env


def _fetch_sdist(command: list[str], target: Path, log: Callable[[str], None]) -> None:
    if target.is_file():
        log(f"using the cached source {target}")
        return
    log("downloading the llama-cpp-python source distribution")
    try:
        _run(command, log, "pip download", None)
    except TunerError as exc:
        raise EnvironmentUnfit(f"could not download the llama-cpp-python sdist ({exc.message}); "
                               "this needs network access",
                               hint="pass --source with a local sdist of the same version") from None
    if not target.is_file():  # pip may keep the dashed spelling of the name
        dashed = target.with_name(target.name.replace("_", "-"))
        if not dashed.is_file():
            raise EnvironmentUnfit(f"pip download left no {target.name} in {target.parent}")
        dashed.rename(target)


def _run(cmd: list[str], log: Callable[[str], None], what: str, hint: str | None,
         env: dict[str, str] | None = None) -> str:
    """Run a command, streaming its merged output line by line; return that output."""
    lines: list[str] = []
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", env=env)
    except FileNotFoundError:
        raise EnvironmentUnfit(f"{cmd[0]} is not installed") from None
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        log(lines[-1])
    if proc.wait() != 0:
        last = next((x.strip() for x in reversed(lines) if x.strip()), "no output")
        raise TunerError(f"{what} failed (exit {proc.returncode}): {last}", hint=hint)
    return "\n".join(lines)


def _collect(out: Path, lib_dir: Path, bin_dir: Path) -> Path | None:
    """Copy every lib*.so* from the build's output folder. Symlinked names (libllama.so ->
    libllama.so.0 -> ...) become hard links to one copy: plain files for any transfer, no
    duplicated 70 MB CUDA library."""
    lib_dir.mkdir()
    copied: dict[Path, Path] = {}
    for path in sorted(out.glob("lib*.so*")):
        real = path.resolve()
        if real not in copied:
            copied[real] = lib_dir / real.name
            shutil.copy2(real, copied[real])
        if path.name != real.name:
            os.link(copied[real], lib_dir / path.name)
    if not (lib_dir / "libllama.so").is_file():
        raise TunerError(f"the build left no libllama.so in {out}")
    bench = out / "llama-bench"
    if not bench.is_file():
        return None
    bin_dir.mkdir()
    shutil.copy2(bench, bin_dir / "llama-bench")
    return bin_dir / "llama-bench"


def probe_library(lib_dir: Path) -> str:
    """The system-info text of the llama.cpp library in ``lib_dir``, loaded by the installed
    llama_cpp package in a child process (a library that crashes on load takes only that)."""
    if not (lib_dir / "libllama.so").is_file():
        raise EnvironmentUnfit(f"no libllama.so in {lib_dir}")
    env = {**os.environ, "LLAMA_CPP_LIB_PATH": str(lib_dir.resolve())}
    try:
        proc = subprocess.run([sys.executable, "-c", PROBE_CODE], env=env, capture_output=True,
                              text=True, errors="replace", timeout=180)
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


def discover_builds(builds_dir: Path = Path("builds"),
                    report: Callable[[str], None] | None = None) -> list[BuildInfo]:
    """The installed package's own library, then every ``<builds_dir>/*/build.json``. Broken
    records are skipped and reported (as warnings unless ``report`` is given)."""
    report = report or (lambda msg: warnings.warn(msg, stacklevel=3))
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
    return BuildInfo(name=folder.name, variant=record.variant, lib_dir=str(folder / record.lib),
                     bench_bin=str(bench) if bench and bench.is_file() else None,
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
