"""A memory plan of a GGUF model, from its header alone: what each device holds at a given
``n_gpu_layers``, and the most layers that fit in a GPU's free memory.

It follows where llama.cpp (the vendored release) puts things:

- ``n_gpu_layers`` counts the repeating layers and the output layer: ``n_layer + 1`` in all.
  With N the layers from ``n_layer + 1 - N`` on go to the GPU, the output layer (``output``,
  ``output_norm``) first of all (``llama_model_base::load_tensors``: ``i_gpu_start``).
- The input layer (``token_embd``) always stays on the host ("very little benefit to
  offloading the input layer"). A model without ``output.weight`` (tied embeddings) gets a
  copy of ``token_embd`` on the output layer's device.
- The KV cache of a layer lives on its layer's device (``offload_kqv``, on by default):
  ``ggml_row_size(type, n_embd_k_gqa(il)) * kv_size`` for K, the same for V, with
  ``kv_size`` the context rounded up to 256 (``llama_context``: ``GGML_PAD(n_ctx, 256)``);
  which layers keep one, how wide, and the recurrent layers' states: tuner/models/kvshape.py
  (grouped-query heads, MLA, hybrids, shared caches, prediction layers). Without flash
  attention llama.cpp stores V transposed and pads every V row to the widest.
- Compute buffers are an estimate of the graph's largest live set per ubatch token
  (``compute_bytes``), calibrated against real loads (docs/partial-offload.md).

Nothing here imports llama_cpp: the parent process plans, workers load.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from tuner.models.gguftensors import (
    EXPERT_TENSOR,
    GgufTable,
    experts_used_share,
    ggml_row_bytes,
    read_table,
)
from tuner.models.kvshape import LINEAR_ATTENTION, CacheShape, cache_shape
from tuner.settings import FFN_ON_HOST, ffn_host_layer, first_gpu_layer

MIB = 1 << 20
CTX_PAD = 256  # llama_context rounds n_ctx up to a multiple of this
# The smallest batch the CUDA backend takes a matmul of host-held weights for (op offload,
# ggml-cuda.cu's offload_op: get_op_batch_size(op) >= 32). The weights are then inputs of a
# CUDA split, copied into the GPU's compute buffer when the split starts and freed after it
# (ggml-backend.cpp's split inputs; one copy with sched copies = 1): the plan reserves the
# largest host layer's weights, a whole layer running as one split. Not yet measured on a GPU
# (benchmarks/gpu_session.sh's fit phase records the CUDA compute buffers of partial loads).
OP_OFFLOAD_MIN_BATCH = 32
# What a worker process holds on the GPU beyond llama.cpp's model/KV/compute buffers (the CUDA
# context, cuBLAS workspace, the backend's pool): NVML's per-process peak minus the buffers of
# the recorded GPU trials in docs/benchmarks (run9-h100, h200-trials) was 547-862 MiB.
PROCESS_OVERHEAD_MIB = 900
# Room kept free beyond the plan, for the estimate's error (compute buffers; see
# docs/partial-offload.md for the measured error), as llama.cpp's own --fit keeps 1024 MiB.
MARGIN_MIB = 256
PLAN_KV_TYPES = ("f16", "q8_0", "q4_0")
_LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class ModelLayout:
    """What the plan needs of a model: per-layer weights and attention shape, the weights
    outside the layers, and the widths its compute graph holds per token."""

    path: Path
    architecture: str
    n_layer: int
    n_embd: int
    n_vocab: int
    n_ff: int
    # Mixture of experts: the experts of a layer, those a token uses and each one's width
    # (0, 0, 0: a dense model)
    n_expert: int
    n_expert_used: int
    n_ff_exp: int
    n_head: tuple[int, ...]  # per layer
    cache: CacheShape  # which layers keep a KV cache or a state, and how wide
    layer_bytes: tuple[int, ...]  # weights of each repeating layer llama.cpp loads
    expert_bytes: tuple[int, ...]  # of which a mixture of experts' expert weights (*_exps)
    skipped_bytes: int  # prediction layers' weights, in the file but not loaded
    input_bytes: int  # token_embd and other input tensors: on the host
    output_bytes: int  # output_norm + output (or the tied copy of token_embd)
    tied_copy_bytes: int  # the copy of token_embd a tied output layer makes on a GPU, else 0
    context_length: int | None
    # Gated delta ("KDA") layers' width: n_head x kda.head_dim (0: none), which their compute
    # graph holds several times per token
    kda_width: int = 0
    # Lightning (linear) attention layers' width: n_head x key_length (0: none; MiniMax-01)
    la_width: int = 0
    # Per layer, the bytes of the FFN matrices each value of the setting ffn_on_host keeps on
    # the host (tuner.settings.FFN_ON_HOST, in its order; empty: not read)
    ffn_part_bytes: tuple[tuple[int, ...], ...] = ()

    def ffn_host_bytes(self, il: int, part: str) -> int:
        """The bytes of layer ``il``'s FFN matrices ``part`` (0 for none)."""
        if not part or not self.ffn_part_bytes:
            return 0
        return self.ffn_part_bytes[il][list(FFN_ON_HOST).index(part)]

    @property
    def n_offloadable(self) -> int:
        """llama.cpp's count of layers n_gpu_layers refers to: repeating + output."""
        return self.n_layer + 1

    @property
    def experts_unused_share(self) -> float:
        """The share of the expert weights a token does not read (0 for a dense model)."""
        if not any(self.expert_bytes):
            return 0.0
        return 1.0 - experts_used_share(self.n_expert, self.n_expert_used)

    @property
    def file_weights_bytes(self) -> int:
        """Every tensor llama.cpp loads once (a tied output's copy not counted; a prediction
        layer's not loaded)."""
        return self.input_bytes + sum(self.layer_bytes) + self.output_bytes - self.tied_copy_bytes


def _per_layer(value: object, n_layer: int, what: str) -> tuple[int, ...]:
    if isinstance(value, list) and len(value) == n_layer:
        return tuple(int(v) for v in value)
    if isinstance(value, int) and not isinstance(value, bool):
        return (int(value),) * n_layer
    raise ValueError(f"{what} missing or not one per layer")


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def layout_of(table: GgufTable) -> ModelLayout:
    """The plan's view of a model from its header (raises ValueError when the header lacks
    what the plan needs: an architecture the plan cannot read)."""
    v = table.values
    arch = v.get("general.architecture")
    if not isinstance(arch, str):
        raise ValueError("no general.architecture")
    n_layer = v.get(f"{arch}.block_count")
    n_embd = v.get(f"{arch}.embedding_length")
    if not isinstance(n_layer, int) or not isinstance(n_embd, int):
        raise ValueError(f"no {arch}.block_count / {arch}.embedding_length")
    n_head = _per_layer(v.get(f"{arch}.attention.head_count"), n_layer, "head_count")
    n_head_kv = _per_layer(v.get(f"{arch}.attention.head_count_kv", list(n_head)), n_layer,
                           "head_count_kv")
    first = max(n_head) or 1
    head_k = _int(v.get(f"{arch}.attention.key_length"), n_embd // first)
    head_v = _int(v.get(f"{arch}.attention.value_length"), head_k)
    cache = cache_shape(v, arch, n_layer, n_embd, n_head_kv, head_k, head_v,
                        n_head=n_head[0])
    ff = v.get(f"{arch}.feed_forward_length", 0)
    n_ff = max(ff) if isinstance(ff, list) else int(ff) if isinstance(ff, int) else 0
    used = _int(v.get(f"{arch}.expert_used_count"), 0)
    ff_exp = v.get(f"{arch}.expert_feed_forward_length")
    n_ff_exp = (max(ff_exp) if isinstance(ff_exp, list) and ff_exp else _int(ff_exp, 0)) or (
        n_ff // used if used else 0)  # qwen3moe.cpp's fallback
    layer_bytes, expert_bytes = [0] * n_layer, [0] * n_layer
    ffn_parts = [[0] * len(FFN_ON_HOST) for _ in range(n_layer)]
    part_tensor = [re.compile(rf"^blk\.\d+\.{group}") for group in FFN_ON_HOST.values()]
    input_bytes = output_bytes = skipped = 0
    names = {t.name: t for t in table.tensors}
    for t in table.tensors:
        if m := _LAYER_TENSOR.match(t.name):
            il = int(m.group(1))
            if il < n_layer:
                if cache.loaded[il]:
                    layer_bytes[il] += t.nbytes
                    expert_bytes[il] += t.nbytes if EXPERT_TENSOR.search(t.name) else 0
                    for i, part in enumerate(part_tensor):
                        ffn_parts[il][i] += t.nbytes if part.match(t.name) else 0
                else:
                    skipped += t.nbytes
                continue
        if t.name.startswith(("output.", "output_norm.")):
            output_bytes += t.nbytes
        else:
            input_bytes += t.nbytes  # token_embd, rope factors...: the host keeps them
    tied = "output.weight" not in names and "token_embd.weight" in names
    copy = names["token_embd.weight"].nbytes if tied else 0
    embd = names.get("token_embd.weight")
    vocab = v.get(f"{arch}.vocab_size")
    if not isinstance(vocab, int):
        vocab = embd.shape[1] if embd is not None and len(embd.shape) > 1 else 0
    ctx = v.get(f"{arch}.context_length")
    return ModelLayout(
        path=table.path, architecture=arch, n_layer=n_layer, n_embd=n_embd, n_vocab=vocab,
        n_ff=n_ff, n_expert=_int(v.get(f"{arch}.expert_count"), 0), n_expert_used=used,
        n_ff_exp=n_ff_exp, n_head=n_head, cache=cache, layer_bytes=tuple(layer_bytes),
        expert_bytes=tuple(expert_bytes), skipped_bytes=skipped,
        input_bytes=input_bytes, output_bytes=output_bytes + copy,
        tied_copy_bytes=copy, context_length=ctx if isinstance(ctx, int) else None,
        kda_width=n_head[0] * _int(v.get(f"{arch}.kda.head_dim"), 0),
        la_width=n_head[0] * head_k if arch in LINEAR_ATTENTION else 0,
        ffn_part_bytes=tuple(tuple(p) for p in ffn_parts))


def keeps_kv_cache(layout: ModelLayout | None) -> bool:
    """Whether any layer keeps a KV cache (not so for a recurrent model such as Mamba); a
    model whose shape the plan cannot read (None) is taken to."""
    return layout is None or any(layout.cache.k_width)


def read_layout(path: str | Path) -> ModelLayout:
    """``layout_of`` the GGUF at ``path`` (a bad file: BadModel; an unreadable shape: ValueError)."""
    return layout_of(read_table(path))


def layout_or_none(path: str | Path) -> ModelLayout | None:
    """``read_layout``, or None for a shape the plan cannot read (a bad file: BadModel)."""
    try:
        return read_layout(path)
    except ValueError:
        return None


def kv_size(n_ctx: int) -> int:
    """The KV cache's cells for a context of ``n_ctx`` (llama.cpp rounds it up to 256)."""
    return -(-max(n_ctx, 1) // CTX_PAD) * CTX_PAD


def kv_bytes_per_token(m: ModelLayout, type_k: str, type_v: str,
                       flash_attn: bool = True) -> tuple[int, ...]:
    """Bytes one cell of the KV cache takes in each layer (K row + V row; without flash
    attention every V row as wide as the widest, as llama.cpp stores V transposed)."""
    c = m.cache
    return tuple(ggml_row_bytes(type_k, k) + ggml_row_bytes(
                     type_v, v if flash_attn or not v else c.v_width_max)
                 for k, v in zip(c.k_width, c.v_width, strict=True))


def compute_bytes(m: ModelLayout, n_ubatch: int, n_ctx: int, flash_attn: bool) -> int:
    """The compute buffer of the device the graph runs on, for the worst-case ubatch llama.cpp
    reserves (``n_ubatch`` tokens, every one an output). f32 activations per token, the largest
    of the graph's stages:

    - output: the logits (n_vocab) and the final hidden state and its norm (2 x n_embd);
    - feed-forward: gate, up and their product (3 x n_ff) beside the residual stream and its
      norm (4 x n_embd); with experts, the used ones' gate, up, product and outputs
      (n_expert_used x (3 x n_ff_exp + n_embd)) when larger;
    - attention: with flash attention Q/K/V and the residual (4 x n_embd); without it the KQ
      matrix (n_head x n_kv, the softmax in place) beside them (7 x n_embd);

    - gated delta ("KDA") layers: Q, K, V, their convolutions and gates (7 x n_head x
      kda.head_dim) beside the residual stream and its norm (4 x n_embd), and one layer's
      recurrent state for the whole ubatch;
    - lightning attention layers: Q, K, V, gate and norm (7 x n_head x key_length) beside
      the residual stream (2 x n_embd), and per head three n_ubatch x n_ubatch matrices (its
      attention within the ubatch): quadratic in n_ubatch, what dominates at real sizes;

    the last four with the KQ mask (n_kv per token: f16 with flash attention, f32 without),
    an input every layer's attention reads (two with sliding-window layers: one per cache).

    Measured (tests/test_memplan.py, docs/partial-offload.md): CPU loads of four shapes at
    n_ubatch 64-512 and 1k-4k contexts within -6% / +6%; the recorded CUDA loads of the
    qwen2.5-7b and llama3-8b shapes (n_ubatch 256-2048; the output stage, n_vocab + n_embd
    there) 2.3-3.1% above; the CUDA fixture (a llama2-7b shape, FA, n_ubatch 512) 8.6% above;
    CPU loads of four Kimi-Linear shapes (the KDA stage) -7% / +10% and of four MiniMax-01
    shapes -12% / +6%, n_ubatch 64-1024, the extremes at n_ubatch 64
    (benchmarks/recurrent_compute.py)."""
    n_kv = kv_size(n_ctx)
    # bytes per token, alive until the last attention
    mask = n_kv * (2 if flash_attn else 4) * (2 if m.cache.sliding else 1)
    out = 4 * (m.n_vocab + 2 * m.n_embd)
    ffn = 4 * max(3 * m.n_ff + 4 * m.n_embd,
                  m.n_expert_used * (3 * m.n_ff_exp + m.n_embd)) + mask
    attn = 4 * (4 * m.n_embd if flash_attn else 7 * m.n_embd + max(m.n_head) * n_kv) + mask
    kda = 0
    if m.kda_width:
        kda = n_ubatch * (4 * (7 * m.kda_width + 4 * m.n_embd) + mask) + max(m.cache.state_bytes)
    la = 0
    if m.la_width:
        la = n_ubatch * (4 * (7 * m.la_width + 2 * m.n_embd) + mask) \
            + 12 * m.n_head[0] * n_ubatch * n_ubatch
    return max(n_ubatch * max(out, ffn, attn), kda, la)


@dataclass(frozen=True)
class DeviceUse:
    """Bytes one device holds: weights, KV cache, compute buffer."""

    weights: int = 0
    kv: int = 0
    compute: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute


@dataclass(frozen=True)
class Placement:
    """What the GPU and the host hold at ``n_gpu_layers`` (llama.cpp's count, 0..n_layer+1)."""

    n_gpu_layers: int
    gpu: DeviceUse
    host: DeviceUse
    gpu_layers: tuple[int, ...]  # repeating layers on the GPU
    output_on_gpu: bool


@dataclass(frozen=True)
class Context:
    """The context settings the plan depends on."""

    n_ctx: int
    type_k: str = "f16"
    type_v: str = "f16"
    n_ubatch: int = 512
    flash_attn: bool = False
    op_offload: bool = True  # llama.cpp's default: large batches of host layers run on the GPU
    # The first layers whose expert weights stay on the host (the setting n_cpu_moe)
    experts_on_host: int = 0
    # The FFN matrices of the first GPU layer kept on the host (the setting ffn_on_host)
    ffn_on_host: str = ""


def gpu_layers(m: ModelLayout, n_gpu_layers: int) -> tuple[tuple[int, ...], bool]:
    """The repeating layers on the GPU and whether the output layer is, as llama.cpp assigns
    them: the last N of the n_layer + 1 (-1 or more than n_layer + 1: all)."""
    start = first_gpu_layer(m.n_layer, n_gpu_layers)
    return tuple(range(start, m.n_layer)), start <= m.n_layer


def place(m: ModelLayout, n_gpu_layers: int, ctx: Context) -> Placement:
    """Bytes per device at ``n_gpu_layers`` with the context ``ctx`` (a CUDA build), and the
    experts of its first ``experts_on_host`` layers kept on the host (llama-server's
    ``--n-cpu-moe``: tensor overrides of their ``*_exps`` weights to the CPU), and the FFN
    matrices ``ffn_on_host`` of the first GPU layer kept there (llama.cpp fit's partial
    layer)."""
    experts_on_host = ctx.experts_on_host
    on_gpu, output = gpu_layers(m, n_gpu_layers)
    gpu_set = set(on_gpu)
    cells = kv_size(ctx.n_ctx)
    per_layer = [t * cells + s for t, s in zip(kv_bytes_per_token(
        m, ctx.type_k, ctx.type_v, ctx.flash_attn), m.cache.state_bytes, strict=True)]
    kv_gpu = sum(per_layer[il] for il in on_gpu)
    kv_host = sum(per_layer) - kv_gpu
    moved = [m.expert_bytes[il] for il in on_gpu if il < experts_on_host]
    ffn_layer = (ffn_host_layer(m.n_layer, n_gpu_layers, experts_on_host) if ctx.ffn_on_host
                 else None)
    if ffn_layer is not None:  # a layer's FFN matrices kept on the host move like experts
        moved.append(m.ffn_host_bytes(ffn_layer, ctx.ffn_on_host))
    w_gpu = sum(m.layer_bytes[il] for il in on_gpu) + (m.output_bytes if output else 0) - sum(moved)
    # The host keeps token_embd (mapped from the file: a tied output on the host shares it).
    w_host = m.input_bytes + sum(m.layer_bytes[il] for il in range(m.n_layer) if il not in gpu_set)
    w_host += (0 if output else m.output_bytes - m.tied_copy_bytes) + sum(moved)
    act = compute_bytes(m, ctx.n_ubatch, ctx.n_ctx, ctx.flash_attn)
    host_layers = [il for il in range(m.n_layer) if il not in gpu_set]
    copy = 0
    if ctx.op_offload and ctx.n_ubatch >= OP_OFFLOAD_MIN_BATCH and (
            host_layers or moved or not output):
        # op offload: a host layer's weights (or experts) are copied to the GPU for a batch's
        # matmuls
        copy = max([m.layer_bytes[il] for il in host_layers] + moved
                   + ([m.output_bytes] if not output else []))
    # The host's own compute buffer: the token embeddings' rows (get_rows runs on the host)
    # and, when host layers or experts compute there, their activations.
    host_act = ctx.n_ubatch * 4 * m.n_embd + (act if host_layers or moved or not output else 0)
    return Placement(n_gpu_layers=len(on_gpu) + int(output), gpu_layers=on_gpu,
                     output_on_gpu=output,
                     gpu=DeviceUse(w_gpu, kv_gpu, act + copy),
                     host=DeviceUse(w_host, kv_host, host_act))


def fewest_experts_on_host(m: ModelLayout, budget: Budget, ctx: Context) -> int | None:
    """For a mixture of experts: the fewest first layers whose experts, kept on the host, let
    every layer fit on the GPU (llama-server's ``--n-cpu-moe``); None for a dense model or
    when even every layer's experts on the host do not make it fit."""
    if not any(m.expert_bytes):
        return None
    for k in range(m.n_layer + 1):
        if place(m, -1, dataclasses.replace(ctx, experts_on_host=k)).gpu.total \
                <= budget.usable_bytes:
            return k
    return None


@dataclass(frozen=True)
class Budget:
    """The GPU memory a worker may use: NVML's free memory now, less the process overhead and
    the margin, and at most ``--max-vram`` (a cap on the whole process, overhead included)."""

    free_mib: float
    max_vram_mib: float | None = None
    overhead_mib: float = PROCESS_OVERHEAD_MIB
    margin_mib: float = MARGIN_MIB

    @property
    def usable_bytes(self) -> int:
        room = self.free_mib - self.overhead_mib - self.margin_mib
        if self.max_vram_mib is not None:
            room = min(room, self.max_vram_mib - self.overhead_mib)
        return max(0, int(room * MIB))


def most_layers(m: ModelLayout, budget: Budget, ctx: Context) -> int:
    """The most n_gpu_layers (0..n_layer+1) whose GPU share fits the budget; 0 when not even
    the output layer does (memory use grows with N, so the first that fails ends the scan)."""
    best = 0
    for n in range(1, m.n_offloadable + 1):
        if place(m, n, ctx).gpu.total > budget.usable_bytes:
            break
        best = n
    return best


def most_context(m: ModelLayout, budget: Budget, ctx: Context, below: int) -> int:
    """The largest n_ctx under ``below``, a multiple of CTX_PAD (what llama.cpp allocates), at
    which the whole model fits with ``ctx``'s other settings; 0 when not even CTX_PAD does."""
    def fits(k: int) -> bool:
        c = dataclasses.replace(ctx, n_ctx=k * CTX_PAD, n_ubatch=min(ctx.n_ubatch, k * CTX_PAD))
        return place(m, -1, c).gpu.total <= budget.usable_bytes

    lo, hi = 0, (below - 1) // CTX_PAD  # memory grows with n_ctx: bisect the pads
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo * CTX_PAD


@dataclass(frozen=True)
class PlanRow:
    """The most layers that fit with one cache type and n_ubatch."""

    kv: str
    n_ubatch: int
    flash_attn: bool
    most_layers: int
    gpu_mib: float  # the GPU share at most_layers
    host_mib: float


@dataclass(frozen=True)
class MemoryPlan:
    """The plan of one model at one context against one GPU budget."""

    layout: ModelLayout
    n_ctx: int
    budget: Budget
    full_gpu_mib: float  # full offload, f16 cache, n_ubatch 512, flash attention off
    rows: tuple[PlanRow, ...] = field(default=())
    # When it does not fit whole: per cache type (smallest n_ubatch), the largest shorter n_ctx at
    # which it would (0: none), as llama.cpp's --fit would shorten an unset context.
    full_ctx: tuple[tuple[str, int], ...] = field(default=())
    # A mixture of experts that does not fit whole: per cache type (smallest n_ubatch), the
    # fewest first layers whose experts on the host let every layer fit (none: no such count).
    experts_host: tuple[tuple[str, int], ...] = field(default=())

    @property
    def fits_full(self) -> bool:
        return any(r.most_layers >= self.layout.n_offloadable for r in self.rows)

    def best_layers(self) -> int:
        return max((r.most_layers for r in self.rows), default=0)

    def lines(self) -> list[str]:
        """What doctor and the sweep print: does it fit, and what fits at which context."""
        m, total = self.layout, self.layout.n_offloadable
        usable = self.budget.usable_bytes / MIB
        cap = (f", --max-vram {self.budget.max_vram_mib:,.0f} MiB"
               if self.budget.max_vram_mib is not None else "")
        head = (f"memory plan: {m.path.name} at n_ctx {self.n_ctx}: full offload needs "
                f"{self.full_gpu_mib:,.0f} MiB of GPU memory (f16 cache, n_ubatch 512); "
                f"{self.budget.free_mib:,.0f} MiB free{cap}, {usable:,.0f} MiB usable after "
                f"{self.budget.overhead_mib:.0f} MiB process overhead and "
                f"{self.budget.margin_mib:.0f} MiB margin")
        out = [head]
        if self.fits_full:
            out.append(f"memory plan: the model fits at full offload ({total}/{total} layers)")
            return out
        out.append(f"memory plan: the model does NOT fit at full offload on this GPU; "
                   f"most layers that fit (of {total}) at n_ctx {self.n_ctx}:")
        for r in self.rows:
            out.append(f"  kv {r.kv:<10} n_ubatch {r.n_ubatch:<5} flash_attn "
                       f"{'on ' if r.flash_attn else 'off'}: {r.most_layers:>3} layers "
                       f"(GPU {r.gpu_mib:,.0f} MiB, host {r.host_mib:,.0f} MiB)")
        shorter = [(kv, c) for kv, c in self.full_ctx if c > 0]
        if shorter:
            ub = min(r.n_ubatch for r in self.rows)
            out.append(f"memory plan: the whole model would fit at a shorter context (n_ubatch "
                       f"{ub}): " + ", ".join(f"n_ctx up to {c:,} with kv {kv}"
                                            for kv, c in shorter))
        elif self.full_ctx:
            gpu_weights = place(m, -1, Context(n_ctx=CTX_PAD)).gpu.weights / MIB
            out.append("memory plan: the whole model does not fit at any context (its GPU "
                       f"weights alone {gpu_weights:,.0f} MiB, {usable:,.0f} MiB usable)")
        if self.experts_host:
            out.append(
                f"memory plan: a mixture of experts: every layer would fit at n_ctx {self.n_ctx} "
                "with the experts of its first K layers on the host ("
                + ", ".join(f"kv {kv}: K {k}" for kv, k in self.experts_host)
                + "), as llama-server's --n-cpu-moe K places them (the setting n_cpu_moe)")
        return out


def kv_pair(kv: str) -> tuple[str, str]:
    k, _, v = kv.partition("/")
    return k, v or k


def make_plan(m: ModelLayout, n_ctx: int, budget: Budget,
              kv_caches: tuple[str, ...] = ("f16/f16", "q8_0/q8_0", "q4_0/q4_0"),
              n_ubatches: tuple[int, ...] = (256, 512, 1024)) -> MemoryPlan:
    """For each cache type and n_ubatch, the most layers that fit at ``n_ctx``. A quantized V
    cache needs flash attention; f16 rows are planned without it (its KQ is the larger)."""
    rows = []
    for kv in kv_caches:
        tk, tv = kv_pair(kv)
        fa = tv not in ("f16", "f32", "bf16")
        for ub in n_ubatches:
            ctx = Context(n_ctx=n_ctx, type_k=tk, type_v=tv, n_ubatch=ub, flash_attn=fa)
            n = most_layers(m, budget, ctx)
            p = place(m, n, ctx)
            rows.append(PlanRow(kv=kv, n_ubatch=ub, flash_attn=fa, most_layers=n,
                                gpu_mib=p.gpu.total / MIB, host_mib=p.host.total / MIB))
    full = place(m, -1, Context(n_ctx=n_ctx)).gpu.total / MIB
    plan = MemoryPlan(layout=m, n_ctx=n_ctx, budget=budget, full_gpu_mib=full, rows=tuple(rows))
    if plan.fits_full:
        return plan
    shorter, experts = [], []
    for kv in kv_caches:  # at the smallest n_ubatch planned: the least compute buffer
        tk, tv = kv_pair(kv)
        ctx = Context(n_ctx=n_ctx, type_k=tk, type_v=tv, n_ubatch=min(n_ubatches),
                      flash_attn=tv not in ("f16", "f32", "bf16"))
        shorter.append((kv, most_context(m, budget, ctx, n_ctx)))
        if (k := fewest_experts_on_host(m, budget, ctx)) is not None:
            experts.append((kv, k))
    return dataclasses.replace(plan, full_ctx=tuple(shorter), experts_host=tuple(experts))
