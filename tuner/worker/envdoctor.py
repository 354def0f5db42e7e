"""``tuner doctor`` without ``--log``: is this machine fit for a CUDA sweep, and if not, what
to do about each problem.

It checks what a sweep relies on, in the order a sweep does: llama-cpp-python installed (read
from its metadata), the spawn start method, every library build (the installed package's and
each ``tuner build`` output) loaded in a spawned worker that reports its flags, whether it can
offload to a GPU, the CUDA devices llama.cpp found, and the GPUs and driver NVML sees. The
parent never imports llama_cpp: a library that crashes on load takes only its probe."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import multiprocessing as mp
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuner.builds.buildinfo import find_system_info
from tuner.builds.catalog import BuildInfo, discover_builds, installed_version, summarize
from tuner.builds.cpuflags import CUDA_INSTALL_HINT, has_amx
from tuner.errors import EnvironmentUnfit
from tuner.evidence.deaths import AMX_FIX
from tuner.evidence.placement import parse_load_log
from tuner.machine.tempdirs import temp_dir
from tuner.specs import Frozen, ModelSettings


class BuildCheck(Frozen):
    name: str
    lib_dir: str
    flags: str | None = None  # builds.summarize of what the library reports
    cuda: bool = False
    offload: bool = False
    llama_devices: list[str] = []  # CUDA devices llama.cpp found
    nvml_gpus: list[str] = []
    driver: str | None = None
    version_ok: bool = True
    amx: bool = False  # built with llama.cpp's AMX code path (tuner/builds/cpuflags.py)
    error: str | None = None

    @property
    def fit(self) -> bool:
        return self.error is None and self.cuda and self.offload and bool(self.llama_devices) \
            and self.version_ok


class EnvReport(Frozen):
    """``exit_code`` 0 when at least one build can run a CUDA sweep here, 3 when none can."""

    lines: list[str]
    problems: list[tuple[str, str]]  # (problem, fix)
    builds: list[BuildCheck]
    exit_code: int


def check_environment(builds_dir: Path = Path("builds")) -> EnvReport:
    lines: list[str] = []
    problems: list[tuple[str, str]] = []
    try:
        version = installed_version()
        lines.append(f"llama-cpp-python: {version} installed")
        lines.append(server_loop_line())
    except EnvironmentUnfit as e:
        problems.append((e.message, CUDA_INSTALL_HINT))
        return _report(lines, problems, [])
    methods = mp.get_all_start_methods()
    if "spawn" in methods:
        lines.append("spawn start method: available (each trial runs in a spawned worker)")
    else:
        problems.append(("the spawn start method is not available (a process forked after "
                         "CUDA started cannot use CUDA)", "run tuner on Linux or macOS with "
                                                          "CPython >= 3.10"))
        return _report(lines, problems, [])
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        problems.append(("CUDA_VISIBLE_DEVICES is set to an empty string, which hides every GPU",
                         "unset CUDA_VISIBLE_DEVICES, or set it to the GPU to use (e.g. 0)"))
    skipped: list[str] = []
    builds = discover_builds(builds_dir, report=skipped.append)
    for msg in skipped:
        problems.append((msg.split(";")[0], msg.split("; ", 1)[-1]))
    if not builds:
        problems.append(("no llama.cpp library: the installed package has none and "
                         f"{builds_dir} holds no build", CUDA_INSTALL_HINT))
    checks = [_probe(b, version) for b in builds]
    for c in checks:
        lines.append(_line(c))
    problems += _problems(checks)
    return _report(lines, problems, checks)


def server_loop_line(find: Callable[[str], object] = importlib.util.find_spec) -> str:
    """Which event loop llama_cpp.server runs on here: its ``__main__`` starts uvicorn with the
    ``auto`` loop, uvloop where it can be imported (fewer milliseconds per streamed token:
    benchmarks/event_loop.py, docs/served-breakdown.md), else asyncio's."""
    if find("uvloop") is None:
        return ("llama_cpp.server event loop: asyncio (uvloop is not installed; pip install "
                "uvloop gives the server a faster loop for each streamed token)")
    try:
        version = importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:
        version = "(version unknown)"
    return f"llama_cpp.server event loop: uvloop {version} (uvicorn's auto choice)"


def _probe(build: BuildInfo, installed: str) -> BuildCheck:
    """Load one build in a spawned worker (no model) and read what it reports."""
    from tuner.worker.runner import Runner

    lib_dir = None if build.name == "installed" else str(Path(build.lib_dir).absolute())
    base: dict[str, Any] = {"name": build.name, "lib_dir": build.lib_dir,
                            "version_ok": build.version == installed}
    with temp_dir("tuner-doctor-") as tmp:
        runner = Runner(Path(tmp) / "none.gguf", Path(tmp), {build.name: lib_dir},
                        load_timeout_s=180)
        try:
            hello = runner.probe_hello(ModelSettings(build=build.name, device="cuda"))
        except RuntimeError as e:
            return BuildCheck(**base, error=str(e))
    flags = find_system_info(hello.system_info)
    return BuildCheck(
        **base, flags=summarize(flags) if flags else None, cuda=bool(flags and flags.cuda),
        offload=hello.supports_gpu_offload, amx=has_amx(hello.system_info or ""),
        llama_devices=parse_load_log(hello.log).cuda_devices,
        nvml_gpus=[f"{g.index}: {g.name}" for g in hello.gpus], driver=hello.driver)


def _line(c: BuildCheck) -> str:
    if c.error:
        return f"build {c.name} ({c.lib_dir}): cannot be loaded: {c.error}"
    devices = ", ".join(c.llama_devices) or "none"
    gpus = ", ".join(c.nvml_gpus) or "none"
    return (f"build {c.name} ({c.lib_dir}): {c.flags or 'flags not reported'}; GPU offload "
            f"{'supported' if c.offload else 'NOT supported'}; CUDA devices seen by llama.cpp: "
            f"{devices}; by NVML: {gpus}; driver {c.driver or 'not found'}")


def _problems(checks: list[BuildCheck]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for c in checks:
        if c.error:
            out.append((f"build {c.name} cannot be loaded",
                        f"rebuild it: tuner build --variant {c.name}" if c.name != "installed"
                        else CUDA_INSTALL_HINT))
        elif not c.version_ok:
            out.append((f"build {c.name} is of another llama-cpp-python version than the "
                        "installed one (the ctypes signatures must match)",
                        f"rebuild it: tuner build --variant {c.name}"))
        if c.amx:
            out.append((f"build {c.name} was compiled with llama.cpp's AMX code path "
                        "(AMX_INT8 = 1), which crashes (SIGSEGV) on weights kept on this CPU: a "
                        "CPU sweep, a partial offload (llama.cpp issue 20824)",
                        f"tuner build --variant {c.name}" if c.name != "installed" else AMX_FIX))
    if any(c.fit for c in checks):
        return out
    usable = [c for c in checks if not c.error and c.version_ok]
    if not any(c.cuda and c.offload for c in usable):
        out.append(("no build can offload to a GPU: every library here is CPU-only",
                    f"{CUDA_INSTALL_HINT}; or tuner build --variant default --cuda-arch N "
                    "(90 for H100/H200)"))
    elif not any(c.llama_devices for c in usable):
        if any(c.nvml_gpus for c in usable):
            out.append(("NVML sees a GPU but llama.cpp's CUDA backend found none: the driver "
                        "is older than the CUDA runtime the library was built with, or the "
                        "GPU is hidden", "update the NVIDIA driver (nvidia-smi shows the CUDA "
                                         "version it supports); check CUDA_VISIBLE_DEVICES"))
        else:
            out.append(("no CUDA device found, by llama.cpp nor by NVML",
                        "check nvidia-smi and the NVIDIA driver; in a container, run it with "
                        "the GPUs (docker run --gpus all)"))
    return out


def _report(lines: list[str], problems: list[tuple[str, str]],
            checks: list[BuildCheck]) -> EnvReport:
    fit = any(c.fit for c in checks)
    out = list(lines)
    for problem, fix in problems:
        out += [f"Problem: {problem}", f"Fix: {fix}"]
    if fit:
        names = ", ".join(c.name for c in checks if c.fit)
        out.append(f"Verdict: fit for a CUDA sweep (builds that can: {names}).")
    elif any(c.error is None and c.version_ok and not c.amx for c in checks):
        out.append("Verdict: NOT fit for a CUDA sweep (tuner sweep --device cpu still works).")
    else:
        out.append("Verdict: NOT fit for a CUDA sweep.")
    return EnvReport(lines=out, problems=problems, builds=checks, exit_code=0 if fit else 3)


def model_fit_lines(model: Path, n_ctx: int, max_vram_mib: float | None) -> list[str]:
    """``tuner doctor --model``: whether the model fits at full offload on this GPU at
    ``n_ctx``, and if not the most layers that fit per cache type and n_ubatch
    (tuner/models/memplan.py against NVML's free memory; ``TUNER_FAKE_GPU_FREE_MIB`` is the
    FAKE reading tests use). A model the plan cannot read is one line, not an error."""
    from tuner.models import memplan
    from tuner.models.modelcheck import check_model
    from tuner.worker.gpumem import free_mib

    check_model(model)  # a bad file: BadModel, one line and exit 2
    free = free_mib(0)
    try:
        layout = memplan.read_layout(model)
    except ValueError as e:
        return [f"memory plan: cannot plan {model.name}: {e}"]
    weights = layout.file_weights_bytes / memplan.MIB
    if free is None:
        return [f"memory plan: {model.name}: {weights:,.0f} MiB of weights; no GPU free-memory "
                "reading (NVML), so no fit can be told"]
    plan = memplan.make_plan(layout, n_ctx, memplan.Budget(free_mib=free, max_vram_mib=max_vram_mib))
    return plan.lines()
