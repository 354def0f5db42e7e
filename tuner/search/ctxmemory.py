"""The context a sweep asks, against the memory that could hold its KV cache: a model with a
huge trained context (or a large ``--n-ctx`` within it) can ask for a cache larger than the
machine, which llama.cpp then fails to allocate late (or the OOM killer ends a worker).

The bound is generous on purpose, so that nothing the search could run is refused: the KV
cache alone (no weights, no compute buffers) at the smallest cache type the space lists,
against the host's available memory plus, for a CUDA sweep, the GPU's free memory (at most
``--max-vram``). Where a reading is missing there is no verdict."""

from __future__ import annotations

from collections.abc import Sequence

from tuner.errors import BadInput
from tuner.models import memplan
from tuner.models.memplan import MIB
from tuner.search import offload
from tuner.worker import gpumem


def kv_bytes(layout: memplan.ModelLayout, n_ctx: int, kv: str) -> int:
    """The KV cache of the whole model at ``n_ctx`` with the cache type ``kv`` ("K/V")."""
    tk, tv = memplan.kv_pair(kv)
    return sum(memplan.kv_bytes_per_token(layout, tk, tv)) * memplan.kv_size(n_ctx)


def room_mib(device: str, max_vram_mib: float | None) -> tuple[float, str] | None:
    """The memory a KV cache could live in, and its parts in words; None without a reading."""
    host = offload.host_available_mib()
    if host is None:
        return None
    if device != "cuda":
        return host, f"{host:,.0f} MiB of host memory available"
    gpu = gpumem.free_mib(0)
    if gpu is None:
        return None
    if max_vram_mib is not None:
        gpu = min(gpu, max_vram_mib)
    return host + gpu, (f"{host:,.0f} MiB of host memory available + {gpu:,.0f} MiB of GPU "
                        "memory free")


def check_context_memory(layout: memplan.ModelLayout | None, n_ctx: int,
                         kv_caches: Sequence[str], device: str,
                         max_vram_mib: float | None) -> None:
    """Refuse (BadInput) an ``n_ctx`` whose KV cache, at the least memory of ``kv_caches``,
    is above the memory that could hold it (no ``layout``, a shape the plan cannot read: no
    verdict)."""
    if layout is None:
        return
    kv = min(kv_caches, key=lambda k: kv_bytes(layout, n_ctx, k))
    need = kv_bytes(layout, n_ctx, kv) / MIB
    room = room_mib(device, max_vram_mib)
    if room is None or need <= room[0]:
        return
    raise BadInput(f"n_ctx {n_ctx} needs a KV cache of {need:,.0f} MiB (kv {kv}, the smallest "
                   f"the search could pick), above the {room[0]:,.0f} MiB that could hold it "
                   f"({room[1]})",
                   hint="ask a smaller --n-ctx (or fewer --prompt-tokens / --gen-tokens)")
