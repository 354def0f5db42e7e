"""Compile one kernel variant of llama.cpp from the llama-cpp-python sdist of the installed
version into ``<builds_dir>/<variant>/``: plan the commands, run them in a staging folder,
check the library reports the variant asked for, then rename the build into place."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from email.parser import HeaderParser
from pathlib import Path
from typing import Literal, overload

from tuner.builds.buildinfo import parse_system_info, variant_of
from tuner.builds.catalog import (
    VARIANTS,
    BuildInfo,
    BuildRecord,
    _info,
    installed_version,
    probe_library,
    summarize,
)
from tuner.builds.cpuflags import cmake_flag_args
from tuner.errors import BadInput, EnvironmentUnfit, TunerError
from tuner.machine.children import GroupWatchdog, popen_kwargs
from tuner.machine.output import write_file
from tuner.specs import Frozen

LIBRARY_TARGET = "llama"  # libllama pulls in libggml* and the backends it links
# llama-bench: for comparing with llama.cpp's own tool (`tuner build`, docs/benchmarks.md).
# The tuner never runs it; a sweep's own build leaves it out, and with it llama-bench's helper
# libraries (llama-common, cpp-httplib): about 400 CPU-seconds of C++ on top of the library's.
BENCH_TARGET = "llama-bench"
# llama-server: llama.cpp's own HTTP server, the second deploy target (tuner/deploy/llamaserver.py).
SERVER_TARGET = "llama-server"
SERVER_ON = "-DLLAMA_BUILD_SERVER=ON"
# Libraries land in <cmake>/bin next to the executables (CMAKE_LIBRARY_OUTPUT_DIRECTORY there).
# RPATH $ORIGIN finds the sibling libggml*; $ORIGIN/../lib lets bin/llama-bench find lib/.
BASE_CMAKE_ARGS = [
    "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TOOLS=ON", "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
    "-DCMAKE_INSTALL_RPATH=$ORIGIN;$ORIGIN/../lib",
]
DEFAULT_NVCC = Path("/usr/local/cuda/bin/nvcc")  # used when nvcc is not on PATH
# The build commands running now (cmake, ninja under it): a sweep that stops while its
# background build compiles ends them (tuner/builds/autobuild.py BackgroundBuilds.cancel).
RUNNING: set[subprocess.Popen[str]] = set()


def stop_running() -> None:
    """End every build command running now, with everything it started."""
    for proc in list(RUNNING):
        _end(proc)


def _end(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGTERM)
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
    server: bool = False

    def shell_lines(self) -> list[str]:
        """The commands as a shell would take them, for printing."""
        return [shlex.join(c) for c in self.commands]


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
    if cuda_arch in _CMAKE_ARCH_WORDS:
        return cuda_arch
    items = re.split(r"[;,]", cuda_arch)
    bad = next((x for x in items if not _CUDA_ARCH.fullmatch(x)), None)
    if bad is not None:
        what = "an empty entry" if not bad else repr(bad)
        raise BadInput(f"bad CUDA architecture list {cuda_arch!r}: {what} is not a compute "
                       "capability (for example 90, 90a, 86-real; or native, all, all-major)",
                       hint="nvidia-smi --query-gpu=compute_cap --format=csv gives 9.0 for 90")
    return ";".join(items)


# CMAKE_CUDA_ARCHITECTURES: a word, or a list of compute capabilities (two or three digits,
# 50 and up, an optional a/f suffix, an optional -real / -virtual).
_CMAKE_ARCH_WORDS = ("native", "all", "all-major")
_CUDA_ARCH = re.compile(r"(?:[5-9]\d|[1-9]\d\d)[af]?(?:-real|-virtual)?")


def targets_of(bench: bool, server: bool = False) -> list[str]:
    return [LIBRARY_TARGET, *([BENCH_TARGET] if bench else []),
            *([SERVER_TARGET] if server else [])]


def _with_server(args: list[str]) -> list[str]:
    """The CMake arguments with the server's tools switched on (BASE_CMAKE_ARGS turns them off)."""
    return [a for a in args if not a.startswith("-DLLAMA_BUILD_SERVER=")] + [SERVER_ON]


# The source archive has no tools/ui (the web UI), which LLAMA_BUILD_SERVER adds and llama-server
# links (llama-ui, llama-ui-assets) with no switch to leave it out. This stand-in is the interface
# llama.cpp's UI generator writes when it has no assets: the server is built with no web UI (its
# API, /health and /v1/* are unchanged; GET / answers 404).
UI_STANDIN = {
    "CMakeLists.txt": (
        "# Written by tuner build: this source has no web UI; llama-server is built without one.\n"
        "add_library(llama-ui STATIC ui.cpp)\n"
        "set_target_properties(llama-ui PROPERTIES POSITION_INDEPENDENT_CODE ON)\n"
        "target_include_directories(llama-ui PUBLIC ${CMAKE_CURRENT_SOURCE_DIR})\n"
        "add_custom_target(llama-ui-assets)\n"),
    "ui.h": (
        "#pragma once\n#include <array>\n#include <cstddef>\n#include <string>\n"
        "struct llama_ui_asset {\n    std::string name;\n    const unsigned char * data;\n"
        "    std::size_t size;\n    std::string etag;\n    std::string type;\n};\n"
        "const llama_ui_asset * llama_ui_find_asset(const std::string & name);\n"
        "bool llama_ui_use_gzip();\n"
        "const std::array<llama_ui_asset, 0> & llama_ui_get_assets();\n"),
    "ui.cpp": (
        "#include \"ui.h\"\n"
        "const llama_ui_asset * llama_ui_find_asset(const std::string &) { return nullptr; }\n"
        "bool llama_ui_use_gzip() { return false; }\n"
        "const std::array<llama_ui_asset, 0> & llama_ui_get_assets() {\n"
        "    static const std::array<llama_ui_asset, 0> none{};\n    return none;\n}\n"),
}


def ui_standin(llama_src: Path) -> bool:
    """Write the no-assets web UI into ``tools/ui`` when the source lacks it; True if written."""
    ui = llama_src / "tools" / "ui"
    if (ui / "CMakeLists.txt").is_file():
        return False
    ui.mkdir(parents=True, exist_ok=True)
    for name, text in UI_STANDIN.items():
        (ui / name).write_text(text)
    return True


def plan_build(variant: str, *, source: Path | None, builds_dir: Path = Path("builds"),
               cuda_arch: str | None = None, jobs: int | None = None,
               bench: bool = True, server: bool = False) -> BuildPlan:
    """Check the request and lay out the commands, without running anything (``bench``:
    llama-bench as well as the library; ``server``: llama-server as well)."""
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
    # llama.cpp's AMX path off, on every variant: the host's weights would crash in it.
    args = BASE_CMAKE_ARGS + VARIANTS[variant] + cmake_flag_args()
    if server:
        args = _with_server(args)
    if arch:
        args.append(f"-DCMAKE_CUDA_ARCHITECTURES={arch}")
    commands += [
        ["cmake", "-S", str(staging / "src" / top / "vendor" / "llama.cpp"), "-B", str(cmake_dir),
         "-G", "Ninja", *args],
        ["cmake", "--build", str(cmake_dir), "--target", "help"],
        ["cmake", "--build", str(cmake_dir), "--target", *targets_of(bench, server),
         "-j", str(jobs or os.cpu_count() or 1)],
    ]
    return BuildPlan(variant=variant, version=version, source=str(source),
                     staging_dir=str(staging), final_dir=str(builds_dir / variant),
                     cmake_args=args, cuda_arch=arch, commands=commands, server=server)


@overload
def build_variant(variant: str, *, source: Path | None, builds_dir: Path = ...,
                  cuda_arch: str | None = ..., jobs: int | None = ..., dry_run: Literal[True],
                  log: Callable[[str], None] = ..., bench: bool = ...,
                  server: bool = ...) -> BuildPlan: ...
@overload
def build_variant(variant: str, *, source: Path | None, builds_dir: Path = ...,
                  cuda_arch: str | None = ..., jobs: int | None = ...,
                  dry_run: Literal[False] = ..., log: Callable[[str], None] = ...,
                  bench: bool = ..., server: bool = ...) -> BuildInfo: ...
def build_variant(variant: str, *, source: Path | None, builds_dir: Path = Path("builds"),
                  cuda_arch: str | None = None, jobs: int | None = None, dry_run: bool = False,
                  log: Callable[[str], None] = lambda _line: None,
                  bench: bool = True, server: bool = False) -> BuildInfo | BuildPlan:
    """Build one kernel variant into ``<builds_dir>/<variant>``. The work happens in a hidden
    staging folder that is renamed into place only once the library has loaded and reported the
    expected kernel choice, so a failed build never looks usable (its tree stays for reading).
    ``bench``: llama-bench as well; ``server``: llama-server as well (the build record says
    whether each was made)."""
    plan = plan_build(variant, source=source, builds_dir=builds_dir, cuda_arch=cuda_arch,
                      jobs=jobs, bench=bench, server=server)
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
    _extract(Path(plan.source), staging / "src", log)
    _compile(commands, env, log, fail_hint, bench=bench, server=server)
    made_bench, made_server = _collect(staging / "cmake" / "bin", staging / "lib",
                                       staging / "bin")
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
        flags_summary=summarize(flags), bench=f"bin/{BENCH_TARGET}" if made_bench else None,
        server=f"bin/{SERVER_TARGET}" if made_server else None)
    write_file(staging / "build.json", (record.model_dump_json(indent=2) + "\n").encode(),
               "the build record")
    _put_in_place(staging, final, variant)
    log(f"built {variant} in {record.duration_s:.0f}s: {final}")
    return _info(final, record)


def _extract(sdist: Path, into: Path, log: Callable[[str], None]) -> None:
    """Unpack the source archive (with tarfile's data filter where this Python has it)."""
    log(f"extracting {sdist}")
    with tarfile.open(sdist, "r:*") as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.12, and 3.10.12/3.11.4 backports
            tar.extractall(into, filter="data")
        else:
            tar.extractall(into)


def _compile(commands: list[list[str]], env: dict[str, str], log: Callable[[str], None],
             fail_hint: str, *, bench: bool, server: bool) -> None:
    """cmake configure, check the source has every target asked for, cmake build."""
    configure, help_cmd, build = commands
    if server and ui_standin(Path(configure[2])):
        log("this source has no web UI (tools/ui): llama-server is built without one")
    _run(configure, log, "cmake configure", fail_hint, env)
    targets = _run(help_cmd, lambda _l: None, "cmake target list", fail_hint, env)
    missing = [t for t in targets_of(bench, server)
               if not re.search(rf"^{re.escape(t)}: ", targets, re.M)]
    if missing:
        raise TunerError(f"this llama.cpp has no target {', '.join(missing)}", hint=fail_hint)
    _run(build, log, "cmake build", fail_hint, env)


def _put_in_place(staging: Path, final: Path, variant: str) -> None:
    """Drop the source and cmake trees, then rename the staging folder over ``final`` (the
    build it replaces moved aside first and removed after)."""
    shutil.rmtree(staging / "src")
    shutil.rmtree(staging / "cmake")
    old = staging.with_name(f".{variant}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def existing_build(variant: str, builds_dir: Path, *, bench: bool,
                   server: bool) -> BuildInfo | None:
    """The build in ``<builds_dir>/<variant>`` when it is of the installed version and holds
    what is asked (llama-bench, llama-server), else None (``tuner build --if-missing``)."""
    record_path = builds_dir / variant / "build.json"
    try:
        record = BuildRecord.model_validate_json(record_path.read_text())
    except (OSError, ValueError):
        return None
    info = _info(builds_dir / variant, record)
    if record.variant != variant or record.version != installed_version():
        return None
    if not (Path(info.lib_dir) / "libllama.so").is_file():
        return None
    if (bench and info.bench_bin is None) or (server and info.server_bin is None):
        return None
    return info


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
        # Its own process group: ending the build ends cmake, ninja and every compiler under it.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", env=env, start_new_session=True,
                                **popen_kwargs(signal.SIGTERM))
    except FileNotFoundError:
        raise EnvironmentUnfit(f"{cmd[0]} is not installed") from None
    assert proc.stdout is not None
    RUNNING.add(proc)
    watchdog = GroupWatchdog(proc.pid)  # ends the group if this command is SIGKILLed
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            log(lines[-1])
        proc.wait()
    except BaseException:  # interrupted: the compilers must not outlive the command
        _end(proc)
        raise
    finally:
        RUNNING.discard(proc)
        watchdog.done()
    if proc.returncode != 0:
        last = next((x.strip() for x in reversed(lines) if x.strip()), "no output")
        raise TunerError(f"{what} failed (exit {proc.returncode}): {last}", hint=hint)
    return "\n".join(lines)


def _collect(out: Path, lib_dir: Path, bin_dir: Path) -> tuple[bool, bool]:
    """Copy every lib*.so* from the build's output folder, and llama-bench and llama-server
    where built (whether each was: the two flags). Symlinked names (libllama.so ->
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
    made = []
    for tool in (BENCH_TARGET, SERVER_TARGET):
        made.append((out / tool).is_file())
        if made[-1]:
            bin_dir.mkdir(exist_ok=True)
            shutil.copy2(out / tool, bin_dir / tool)
    return made[0], made[1]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
