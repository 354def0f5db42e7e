"""Which kernel builds can change what a GPU runs, decided from evidence: the compute capability
each CUDA device reported when a probe started its backend, and the architectures each build's
library says it was compiled for, read against the rule of the vendored llama.cpp.

The rule (``ggml_cuda_should_use_mmq`` in vendor/llama.cpp/ggml/src/ggml-cuda/mmq.cu of
llama-cpp-python 0.3.36, the only place ``GGML_CUDA_FORCE_MMQ`` acts): for a quantized type with
MMQ kernels it returns true as soon as Turing's tensor-core MMA is available (an NVIDIA device of
compute capability >= 7.5 with code compiled for it), before the ``GGML_CUDA_FORCE_MMQ`` branch
is reached; for every other type it returns false before that branch too. On such a GPU a
force-mmq build therefore runs exactly the default build's kernels, whatever the model's types:
its trials would measure the default build again (run 2 of docs/benchmarks.md, and the issue's
H100 sweeps: its best within 1.3% of the default build's, inside the noise). On an older GPU
(Pascal, Volta) it does change the kernels and is kept."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tuner.builds.buildinfo import DEVICE_LINE, BuildFlags, variant_of

TURING = 750  # GGML_CUDA_CC_TURING: compute capability x 100


def compute_capabilities(log: str) -> list[int]:
    """Each CUDA device's compute capability (x 100: 9.0 -> 900) from the lines the CUDA backend
    prints when it starts (``Device 0: NVIDIA H100 80GB HBM3, compute capability 9.0, ...``)."""
    found = (DEVICE_LINE.match(line) for line in log.splitlines())
    return [int(m.group(3)) * 100 + int(m.group(4)) * 10 for m in found if m and m.group(3)]


def _arch(text: str) -> int | None:
    """A compiled architecture as the library lists it ("900", "90", "90-virtual") x 100."""
    digits = re.match(r"\d+", text.strip())
    if digits is None:
        return None
    n = int(digits.group())
    return n * 10 if n < 100 else n


def highest_compiled_arch(flags: BuildFlags, cc: int) -> int | None:
    """The newest architecture the build compiled that runs on a device of ``cc`` (what
    ggml_cuda_highest_compiled_arch returns); None when the library lists none."""
    archs = [a for a in map(_arch, flags.archs) if a is not None and a <= cc]
    return max(archs) if archs else None


def redundant_builds(builds: dict[str, tuple[BuildFlags, str]]) -> dict[str, str]:
    """The builds of ``builds`` (name -> its library's flags and its probe's log) that would run
    the kernels of another build in the set on every CUDA device present, with why. Only a
    force-mmq build can be so, beside a plain CUDA build (no FORCE flag)."""
    plain = [n for n, (f, _) in builds.items() if variant_of(f) == "default"]
    if not plain:
        return {}
    base_name = plain[0]
    base_flags, base_log = builds[base_name]
    out: dict[str, str] = {}
    for name, (flags, log) in builds.items():
        if variant_of(flags) != "force-mmq":
            continue
        ccs = compute_capabilities(log) or compute_capabilities(base_log)
        if not ccs:
            continue  # no device seen: no evidence either way
        turing_mma = all(
            cc >= TURING and (highest_compiled_arch(flags, cc) or 0) >= TURING
            and (highest_compiled_arch(base_flags, cc) or 0) >= TURING for cc in ccs)
        if turing_mma:
            shown = ", ".join(f"{cc // 100}.{cc % 100 // 10}" for cc in ccs)
            out[name] = (f"on compute capability {shown} llama.cpp picks its MMQ kernels without "
                         f"GGML_CUDA_FORCE_MMQ (tensor-core MMA, ggml-cuda/mmq.cu), so {name} runs "
                         f"the kernels of {base_name}")
    return out


@dataclass(frozen=True)
class MissingBuild:
    """A kernel build that could change what this machine's GPUs run, not built yet."""

    variant: str
    cuda_arch: str  # CMAKE_CUDA_ARCHITECTURES, e.g. "90"

    @property
    def command(self) -> str:
        return f"tuner build --variant {self.variant} --cuda-arch {self.cuda_arch}"


def missing_builds(builds: dict[str, tuple[BuildFlags, str]]) -> list[MissingBuild]:
    """The variants that could change the kernels of the CUDA devices present but are not among
    ``builds``: force-cublas always (cuBLAS instead of MMQ for quantized matrix products:
    1.4-1.9x the default build's prompt speed on an H100, issue 11), force-mmq only where it is
    not redundant (see the module docstring). [] without a CUDA build or without a device line
    to read the architecture from."""
    cuda = {n: (f, log) for n, (f, log) in builds.items() if f.cuda}
    ccs = [cc for _, log in cuda.values() for cc in compute_capabilities(log)]
    if not cuda or not ccs:
        return []
    have = {variant_of(f) for f, _ in cuda.values()}
    wanted = ["force-cublas"]
    if min(ccs) < TURING:
        wanted.append("force-mmq")
    arch = ",".join(sorted({str(cc // 10) for cc in ccs}))  # 900 -> "90" (CMAKE_CUDA_ARCHITECTURES)
    return [MissingBuild(v, arch) for v in wanted if v not in have]
