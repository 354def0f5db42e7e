"""Why every trial of a build died the same way: the likely cause, read from the evidence the
dead workers left (their signal, the last lines of their logs, the buffers their load made), and
the fix. A sweep that cannot get one trial through says this instead of only "no trial
completed"; `tuner doctor --log` says the same of a saved log."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from tuner.builds.cpuflags import pip_install_command

# The load log line of a model whose CPU weights went into llama.cpp's AMX buffer type.
AMX_BUFFER = re.compile(r"\bAMX model buffer size\b")
_CUDA_ERROR = re.compile(r"CUDA error: ?(.*)")
_NOISE = re.compile(r"0x[0-9a-f]+|\d+(\.\d+)?")
# What llama.cpp's logs say when memory ran out: CUDA's own error text, ggml's allocators', and
# cuBLAS's (cublasCreate's CUBLAS_STATUS_ALLOC_FAILED, "CUDA error: the resource allocation
# failed": a context without flash attention creates its cuBLAS handle in the first decode, and
# at a full GPU that fails; run 35, docs/benchmarks.md).
OOM_MARKERS = ("out of memory", "cudaMalloc failed", "failed to allocate", "unable to allocate",
               "resource allocation failed")


def says_out_of_memory(text: str) -> bool:
    """Whether a log's lines (joined) say that memory ran out (in any case)."""
    low = text.lower()
    return any(m.lower() in low for m in OOM_MARKERS)


@dataclass(frozen=True)
class Death:
    """One trial that did not complete, as its record tells it."""

    build: str
    state: str  # crashed, infeasible, timeout, failed
    signal: str | None = None
    error: str | None = None
    log_lines: list[str] = field(default_factory=list)  # the load log and the log's tail
    model_buffers: list[str] = field(default_factory=list)  # "CPU", "AMX", "CUDA0"...

    def key(self) -> tuple[str, str, str]:
        """What "the same way" compares: the state, the signal, and the last log line with its
        numbers and addresses left out."""
        last = next((x.strip() for x in reversed(self.log_lines) if x.strip()), "")
        return self.state, self.signal or "", _NOISE.sub("#", last)


@dataclass(frozen=True)
class Cause:
    """The likely cause of a build's deaths: one line each for what happened and the fix."""

    build: str
    count: int
    what: str
    fix: str | None

    def lines(self) -> list[str]:
        return [f"likely cause ({self.count} trial(s) of build {self.build}): {self.what}",
                *([f"fix: {self.fix}"] if self.fix else [])]


AMX_FIX = ("rebuild llama-cpp-python without llama.cpp's AMX code path (tuner/builds/cpuflags.py): "
           f"bash scripts/install.sh in a checkout, or {pip_install_command()}")


def amx_lines(log: str) -> list[str]:
    """What a saved log's AMX buffer means (`tuner doctor --log`), or nothing without one."""
    if not AMX_BUFFER.search(log):
        return []
    return ["Warning: the model's CPU weights went into llama.cpp's AMX buffer (`AMX model "
            "buffer size`): its AMX backend crashes with SIGSEGV in the first batched decode "
            "(llama.cpp issue 20824); a process that died after this load died of it",
            f"Fix: {AMX_FIX}"]


def common_causes(deaths: list[Death], completed_builds: set[str]) -> list[Cause]:
    """For each build none of whose trials completed and all of whose trials died the same
    way, the likely cause. Builds that completed a trial, or whose deaths differ, name none."""
    by_build: dict[str, list[Death]] = {}
    for d in deaths:
        by_build.setdefault(d.build, []).append(d)
    causes = []
    for build, items in by_build.items():
        if build in completed_builds or len(Counter(d.key() for d in items)) != 1:
            continue
        causes.append(cause_of(items[0], len(items)))
    return causes


def cause_of(death: Death, count: int = 1) -> Cause:
    """The likely cause of one way of dying, from the strongest evidence first."""
    text = "\n".join([*(death.log_lines or []), death.error or ""])
    amx = "AMX" in death.model_buffers or bool(AMX_BUFFER.search(text))
    sig = death.signal or ""
    if amx and death.state == "crashed":
        return Cause(death.build, count,
                     f"the worker died ({sig or 'crashed'}) with the model's CPU weights in "
                     "llama.cpp's AMX buffer (`AMX model buffer size` in the load log): llama.cpp's "
                     "AMX backend crashes on this CPU (llama.cpp issue 20824); the library was "
                     "built with its AMX code path", AMX_FIX)
    if sig == "SIGILL":
        return Cause(death.build, count,
                     "the worker died of an illegal instruction: the library uses CPU "
                     "instructions this CPU lacks (built on or for another machine, or a cached "
                     "wheel)", f"rebuild it here: {pip_install_command()}")
    if says_out_of_memory(text):
        return Cause(death.build, count,
                     "out of memory: the model and context do not fit the memory asked for "
                     "at these settings",
                     "fewer GPU layers, a smaller --n-ctx or a quantized KV cache; `tuner doctor` "
                     "shows what fits")
    if m := _CUDA_ERROR.search(text):
        detail = m.group(1).strip() or "see the worker log"
        fix = ("build for this GPU's architecture: tuner build --variant default --cuda-arch N"
               if "no kernel image" in detail else "check the driver and GPU with tuner doctor")
        return Cause(death.build, count, f"a CUDA error: {detail}", fix)
    if sig == "SIGKILL" and not death.log_lines:
        return Cause(death.build, count,
                     "the worker was killed (SIGKILL) without a word: most likely the system "
                     "ran out of host memory (the kernel's OOM killer)",
                     "a smaller model or context, or more free memory on the host")
    last = next((x.strip() for x in reversed(death.log_lines) if x.strip()), "")
    how = sig or death.error or death.state
    return Cause(death.build, count,
                 f"every trial died the same way ({how})" + (f"; the log ends: {last}" if last
                                                             else ""),
                 "run `tuner doctor`, and read the worker logs of the study's logs folder")
