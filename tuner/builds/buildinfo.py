"""What a llama.cpp library build can do, read from the text of ``llama_print_system_info()``.

The tuner loads several builds of the same library (default, force-cublas, force-mmq) and must
know which one a worker really got, and which flash-attention K/V kernels it compiled: asking
for a pair it lacks makes llama.cpp run attention on the CPU without saying so. The system-info
line is the library's own statement of both, so it is the source of truth here.

The line looks like ``CUDA : ARCHS = 900 | USE_GRAPHS = 1 | FA_QUANTS = q4_0-q4_0,... | CPU :
SSE3 = 1 | ...``: each backend's name, `` : ``, then ``KEY = VALUE | `` per feature. A backend
with no features is only its name (``CUDA : CPU : SSE3 = 1 | ``), and llama-server prefixes the
line with ``system_info: n_threads = ... | ``; both are handled.
"""

from __future__ import annotations

import re

from pydantic import Field

from tuner.errors import BadInput
from tuner.specs import Frozen

# "NAME : " opening a backend's features; a space before the colon tells it from "func: msg".
_HEADER = re.compile(r"([A-Za-z][\w.-]*) :(?:\s+|$)")
_FA_PAIR = re.compile(r"([a-z0-9_]+)-([a-z0-9_]+)")  # ggml type names: q8_0, bf16, iq4_nl

# K/V types the CUDA vector flash-attention kernels cover when a build compiles every pair
# (GGML_CUDA_FA_ALL_QUANTS); f32 and iq4_nl have no kernels even then.
_FA_ALL_TYPES = frozenset({"f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0"})
# What a CUDA build compiled before it reported FA_QUANTS at all.
_FA_CLASSIC_PAIRS = frozenset({("f16", "f16"), ("q4_0", "q4_0"), ("q8_0", "q8_0")})

_TRUE = {"1", "on", "yes", "true"}
# A CUDA device as ggml lists it (a probe's or a load log's lines): index, name, compute capability
DEVICE_LINE = re.compile(r"^\s+Device (\d+): (.+?)(?:, compute capability (\d+)\.(\d+).*)?$")


class BuildFlags(Frozen):
    """The compile-time facts of one library build that change speed or correctness."""

    cuda: bool
    archs: list[str] = Field(default_factory=list)
    force_cublas: bool = False
    force_mmq: bool = False
    cuda_graphs: bool | None = None
    """None for a build without CUDA; for a CUDA build, whether USE_GRAPHS was compiled in."""
    fa_quants: list[tuple[str, str]] = Field(default_factory=list)
    """K/V type pairs with compiled flash-attention kernels, as the build lists them."""
    fa_all_quants: bool = False
    backends: list[str] = Field(default_factory=list)
    raw: str = ""


def _split_line(line: str) -> tuple[list[str], list[tuple[str, str, str]]] | None:
    """Backends and (backend, key, value) features of one system-info line, or None when the
    line is not one."""
    backends: list[str] = []
    features: list[tuple[str, str, str]] = []
    backend: str | None = None
    for piece in line.split("|"):
        rest = piece.strip()
        while m := _HEADER.match(rest):
            backend = m.group(1)
            if backend not in backends:
                backends.append(backend)
            rest = rest[m.end():]
        if backend is None:
            continue  # a prefix such as "system_info: n_threads = 8 / 16"
        key, eq, value = rest.partition("=")
        if eq and key.strip():
            features.append((backend, key.strip(), value.strip()))
    if not backends or not features:
        return None
    return backends, features


def find_system_info(text: str) -> BuildFlags | None:
    """The build flags stated anywhere in ``text`` (a log or the bare system-info output), or
    None when no system-info line is there. Several lines are merged, later values winning."""
    backends: list[str] = []
    features: dict[str, dict[str, str]] = {}
    raw: list[str] = []
    for line in text.splitlines():
        if "|" not in line or " : " not in line or "=" not in line:
            continue
        found = _split_line(line)
        if found is None:
            continue
        raw.append(line.strip())
        for name in found[0]:
            if name not in backends:
                backends.append(name)
        for name, key, value in found[1]:
            features.setdefault(name, {})[key] = value
    if not raw:
        return None
    return _flags(backends, features, "\n".join(raw))


def parse_system_info(text: str) -> BuildFlags:
    """The build flags in the output of ``llama_print_system_info()``. Other lines (the
    ``ggml_cuda_init`` device list, a whole load log) may surround it.

    Raises BadInput when the text holds no system-info line."""
    flags = find_system_info(text)
    if flags is None:
        raise BadInput(
            "no llama.cpp system-info line found (expected 'CPU : SSE3 = 1 | ...')",
            hint="pass the text that llama_cpp.llama_print_system_info() returns",
        )
    return flags


def _flags(backends: list[str], features: dict[str, dict[str, str]], raw: str) -> BuildFlags:
    cuda = "CUDA" in features or "CUDA" in backends
    cf = features.get("CUDA", {})
    pairs, fa_all = _fa_pairs(cf.get("FA_QUANTS", ""))
    return BuildFlags(
        cuda=cuda,
        archs=[a.strip() for a in cf.get("ARCHS", "").split(",") if a.strip()],
        force_cublas=_truthy(cf.get("FORCE_CUBLAS")),
        force_mmq=_truthy(cf.get("FORCE_MMQ")),
        # ggml-cuda lists USE_GRAPHS only when compiled in, so its absence means "off".
        cuda_graphs=_truthy(cf.get("USE_GRAPHS")) if cuda else None,
        fa_quants=pairs,
        fa_all_quants=fa_all or _truthy(cf.get("FA_ALL_QUANTS")),
        backends=backends,
        raw=raw,
    )


def _fa_pairs(value: str) -> tuple[list[tuple[str, str]], bool]:
    """Parse ``q4_0-q4_0,q8_0-q8_0`` into pairs; ``all`` means every pair. Items of any other
    form are skipped, so an unknown spelling gives fewer pairs, never an error."""
    pairs: list[tuple[str, str]] = []
    every = False
    for item in re.split(r"[,;\s]+", value.strip().lower()):
        if item == "all":
            every = True
            continue
        m = _FA_PAIR.fullmatch(item)
        if m and (m.group(1), m.group(2)) not in pairs:
            pairs.append((m.group(1), m.group(2)))
    return pairs, every


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in _TRUE


def variant_of(flags: BuildFlags) -> str:
    """The tuner's name for the build: "force-cublas", "force-mmq" or "default" for a CUDA
    build, "cpu" for one without CUDA. FORCE_CUBLAS wins over FORCE_MMQ, as in ggml-cuda."""
    if not flags.cuda:
        return "cpu"
    if flags.force_cublas:
        return "force-cublas"
    if flags.force_mmq:
        return "force-mmq"
    return "default"


def fa_supports(flags: BuildFlags, type_k: str, type_v: str) -> bool:
    """Whether flash attention has kernels for this K/V cache pair on this build.

    The CPU backend covers every pair. A CUDA build covers the pairs it lists in FA_QUANTS, or
    every pair of the quantized/half types when built with all quants; a build that lists
    nothing (older than FA_QUANTS) is taken to have the classic default set."""
    k, v = type_k.strip().lower(), type_v.strip().lower()
    if not flags.cuda:
        return True
    if flags.fa_all_quants and k in _FA_ALL_TYPES and v in _FA_ALL_TYPES:
        return True
    if (k, v) in flags.fa_quants:
        return True
    if not flags.fa_quants and not flags.fa_all_quants:
        return (k, v) in _FA_CLASSIC_PAIRS
    return False
