"""Search spaces: which values each setting may take, read from YAML, and the grid of valid
trial specs they make once the builds' compiled flash-attention kernels are known."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Callable

import yaml
from pydantic import Field, ValidationError, field_validator

from tuner.errors import BadInput
from tuner.specs import (
    KV_TYPES,
    UNQUANTIZED_KV,
    ContextSettings,
    Device,
    Frozen,
    ModelSettings,
    TrialSpec,
    Workload,
    _digest,
)

# Above this many combinations the grid is refused: planning it would take minutes and running
# it years. Split the space into several --space files (one study each) instead.
MAX_COMBINATIONS = 250_000

# llama-cpp-python's own defaults (Llama(): n_batch 512, n_ubatch 512, no flash attention,
# f16 cache) with every layer on the GPU: the baseline every sweep measures first.
BASELINE = ContextSettings(n_batch=512, n_ubatch=512, flash_attn=False, type_k="f16", type_v="f16")


def is_baseline_context(cs: ContextSettings) -> bool:
    """The baseline's settings, whatever the thread count."""
    return cs.model_copy(update={"n_threads": None}) == BASELINE


class Space(Frozen):
    """Lists of values per setting; the grid is their product minus invalid combinations."""

    builds: list[str] = Field(default_factory=lambda: ["installed"])
    n_gpu_layers: list[int] = Field(default_factory=lambda: [-1])
    n_batch: list[int] = Field(default_factory=lambda: [512])
    n_ubatch: list[int] = Field(default_factory=lambda: [512])
    flash_attn: list[bool] = Field(default_factory=lambda: [False])
    kv_cache: list[str] = Field(default_factory=lambda: ["f16/f16"])
    n_threads: list[int | None] = Field(default_factory=lambda: [None])
    cuda_graphs: list[bool] = Field(default_factory=lambda: [True])

    @field_validator("n_batch", "n_ubatch")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(x < 1 for x in v):
            raise ValueError("must be a non-empty list of positive integers")
        return v

    @field_validator("builds", "n_gpu_layers", "flash_attn", "kv_cache", "n_threads",
                     "cuda_graphs")
    @classmethod
    def _not_empty(cls, v: list) -> list:
        if not v:
            raise ValueError("must list at least one value")
        return v

    @field_validator("builds")
    @classmethod
    def _build_names(cls, v: list[str]) -> list[str]:
        if any(not name.strip() for name in v):
            raise ValueError("build names must not be empty")
        return v

    @field_validator("n_threads")
    @classmethod
    def _threads(cls, v: list[int | None]) -> list[int | None]:
        if any(x is not None and x < 1 for x in v):
            raise ValueError("thread counts must be positive integers (or null: llama.cpp's "
                             "choice)")
        return v

    def space_id(self) -> str:
        """Stable identity of the space, kept on every trial planned under it."""
        return _digest(self.model_dump())[:12]

    def combinations(self) -> int:
        """How many settings the product of the lists holds, before invalid ones are dropped."""
        n = 1
        for name in type(self).model_fields:
            n *= len(getattr(self, name))
        return n

    @field_validator("kv_cache")
    @classmethod
    def _kv_pairs(cls, v: list[str]) -> list[str]:
        for pair in v:
            k, sep, val = pair.partition("/")
            if not sep:
                raise ValueError(f"KV cache entry {pair!r} must be 'K/V', e.g. 'q8_0/q8_0'")
            for t in (k, val):
                if t not in KV_TYPES:
                    raise ValueError(f"unknown KV cache type {t!r} (known: "
                                     f"{', '.join(sorted(KV_TYPES))})")
        return v


def default_space(device: Device, builds: list[str]) -> Space:
    if device == "cpu":
        cores = os.cpu_count() or 1
        threads = sorted({cores, max(1, cores // 2)}, reverse=True)
        return Space(builds=builds, n_gpu_layers=[0], n_batch=[256, 512], n_ubatch=[128, 512],
                     flash_attn=[False, True], kv_cache=["f16/f16", "q8_0/q8_0"],
                     n_threads=threads)
    return Space(builds=builds, n_gpu_layers=[-1], n_batch=[512, 1024, 2048, 4096],
                 n_ubatch=[256, 512, 1024, 2048, 4096], flash_attn=[False, True],
                 kv_cache=["f16/f16", "q8_0/q8_0"])


def load_space(path: Path) -> Space:
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"search space file {p} not found" if not p.exists()
                       else f"search space {p} is not a file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise BadInput(f"search space {p} is not readable YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise BadInput(f"search space {p} must be a mapping of setting -> list of values")
    data = {k: (v if isinstance(v, list) else [v]) for k, v in data.items()}
    try:
        return Space.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise BadInput(f"search space {p}: {where}: {err['msg']}") from None


def grid(space: Space, device: Device, workload: Workload,
         fa_ok: Callable[[str, str, str], bool]) -> list[TrialSpec]:
    """Every valid combination, baseline first. ``fa_ok(build, type_k, type_v)`` tells whether a
    build compiled flash-attention kernels for that K/V pair. Combinations that would run the
    same computation (an n_batch beyond the prompt: llama.cpp decodes the prompt in one chunk
    either way) are kept once, with the smallest values."""
    if space.combinations() > MAX_COMBINATIONS:
        raise BadInput(f"the search space holds {space.combinations():,} combinations, above "
                       f"the limit of {MAX_COMBINATIONS:,}",
                       hint="narrow the lists, or split the space into several --space files "
                            "with one --study each")
    specs: list[TrialSpec] = []
    seen: set[tuple] = set()
    p = max(workload.prompt_tokens, 1)
    for build, ngl, graphs, nb, nu, fa, kv, th in itertools.product(
        space.builds, space.n_gpu_layers, space.cuda_graphs, space.n_batch, space.n_ubatch,
        space.flash_attn, space.kv_cache, space.n_threads,
    ):
        tk, tv = kv.split("/")
        if nu > nb:
            continue
        if tv not in UNQUANTIZED_KV and not fa:
            continue  # llama.cpp needs flash attention for a quantized V cache
        if fa and not fa_ok(build, tk, tv):
            continue
        eff_b = min(nb, p)
        same = (build, ngl, graphs, eff_b, min(nu, eff_b), fa, kv, th)
        if same in seen:
            continue
        seen.add(same)
        specs.append(TrialSpec(
            model=ModelSettings(build=build, device=device, n_gpu_layers=ngl, cuda_graphs=graphs),
            context=ContextSettings(n_batch=nb, n_ubatch=nu, flash_attn=fa, type_k=tk, type_v=tv,
                                    n_threads=th),
        ))
    # Grouped by worker settings (one model load each), the baseline first within each group.
    order = {k: i for i, k in enumerate(dict.fromkeys(s.model.worker_key() for s in specs))}
    specs.sort(key=lambda s: (order[s.model.worker_key()], not is_baseline_context(s.context)))
    return specs
