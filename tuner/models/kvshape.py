"""Which layers of a GGUF model keep a KV cache or a recurrent state, and how wide, read from
its header as the vendored llama.cpp allocates them (src/llama-kv-cache.cpp,
src/llama-memory-recurrent.cpp, src/llama-hparams.cpp and each architecture's loader):

- a layer's K row is ``head_dim_k(il) * n_head_kv(il)`` elements per cell and its V row
  ``head_dim_v(il) * n_head_kv(il)`` (per-layer head counts where the GGUF has arrays; the
  sliding-window layers' own head widths, ``key_length_swa`` / ``value_length_swa``, where the
  GGUF lists which layers slide);
- multi-head latent attention (``key_length_mla`` and ``value_length_mla`` set): one K row of
  the compressed width (``key_length``), no V cache at all;
- no cache of its own: a recurrent layer of a hybrid (a 0 KV head count;
  ``attention.recurrent_layers``; else all but each ``full_attention_interval``-th layer in
  the architectures that read one), a layer that shares another's cache
  (``attention.shared_kv_layers``, gemma3n's fixed 20) and a multi-token-prediction layer
  (``nextn_predict_layers``: llama.cpp neither loads its weights nor caches it by default);
- a recurrent layer's state, f32, one sequence's whatever the context: Mamba-style
  (``ssm.*`` keys: the convolution's last ``conv_kernel - 1`` columns and the state), LFM2's
  short convolutions, RWKV's (``wkv.head_size``: the shifted tokens and the wkv state), the
  gated delta ("KDA") layers of Kimi-Linear and its kin (``kda.head_dim``: the Q, K and V
  convolutions and a head_dim x head_dim state per head) and MiniMax-01's lightning attention
  (a key_length x key_length state per head);
- sliding-window layers: llama-cpp-python keeps llama.cpp's ``swa_full`` (on), so their cache
  holds the whole context like the others' (llama-server's default, off, holds less)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# All but every N-th layer recurrent when the GGUF has no full_attention_interval / recurrent
# layers (qwen3next.cpp, qwen35.cpp, qwen35moe.cpp, qwen4exp.cpp, minimax-01.cpp).
INTERVAL_DEFAULT = {"qwen3next": 4, "qwen35": 4, "qwen35moe": 4, "qwen4exp": 4,
                    "minimax-01": 8}
KV_FROM_START = {"gemma3n": 20}  # gemma3n.cpp: n_layer_kv_from_start; later layers share
# The architectures whose recurrent layers keep a key_length x key_length state per head
# (llama_hparams::n_embd_head_la; minimax-01.cpp sets it to the key width).
LINEAR_ATTENTION = ("minimax-01",)
F32 = 4


@dataclass(frozen=True)
class CacheShape:
    """Per layer: a K and a V row's elements per cell (0: none), the recurrent state's bytes;
    and the V width every V row is padded to without flash attention."""

    k_width: tuple[int, ...]
    v_width: tuple[int, ...]
    v_width_max: int
    state_bytes: tuple[int, ...]
    loaded: tuple[bool, ...]  # whether llama.cpp loads the layer's weights
    # Sliding-window layers beside global ones: the graph then holds two attention masks
    # (llm_graph_input_attn_kv_iswa), one per cache.
    sliding: bool = False


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _bools(value: object, n: int) -> tuple[bool, ...] | None:
    if isinstance(value, list) and len(value) >= n:
        return tuple(bool(v) for v in value[:n])
    return None


def cache_shape(values: dict[str, object], arch: str, n_layer: int, n_embd: int,
                n_head_kv: tuple[int, ...], head_k: int, head_v: int, *,
                n_head: int) -> CacheShape:
    """The cache of each of the ``n_layer`` blocks (``block_count``, prediction layers
    included) from the header's ``values``; ``n_head``: the first layer's query heads
    (llama_hparams::n_head())."""
    def key(name: str) -> object:
        return values.get(f"{arch}.{name}")

    nextn = _int(key("nextn_predict_layers"), 0)
    trunk = n_layer - nextn if 0 < nextn < n_layer else n_layer
    swa = _bools(key("attention.sliding_window_pattern"), n_layer) or (False,) * n_layer
    head_k_swa = _int(key("attention.key_length_swa"), head_k)
    head_v_swa = _int(key("attention.value_length_swa"), head_v)
    hk = [head_k_swa if s else head_k for s in swa]
    hv = [head_v_swa if s else head_v for s in swa]
    mla = _int(key("attention.key_length_mla"), 0) > 0 and _int(key("attention.value_length_mla"), 0) > 0
    state = _state_bytes(key, arch, n_embd, n_head, head_k)
    recurrent = _bools(key("attention.recurrent_layers"), n_layer)
    if recurrent is None:
        interval = _int(key("full_attention_interval"), INTERVAL_DEFAULT.get(arch, 0))
        # else the hybrids that mark a recurrent layer by its 0 KV heads (jamba.cpp,
        # granite-hybrid.cpp, lfm2.cpp, plamo2.cpp...): those with a state to keep
        recurrent = tuple((i < trunk and (i + 1) % interval != 0) if interval > 0
                          else (state > 0 and n_head_kv[i] == 0) for i in range(n_layer))
    shared = _int(key("attention.shared_kv_layers"), 0)
    kv_from = KV_FROM_START.get(arch, n_layer - shared)
    k_width, v_width = [], []
    for il in range(n_layer):
        cached = (n_head_kv[il] > 0 and not recurrent[il] and il < kv_from and il < trunk)
        k_width.append(hk[il] * n_head_kv[il] if cached else 0)
        v_width.append(hv[il] * n_head_kv[il] if cached and not mla else 0)
    return CacheShape(
        k_width=tuple(k_width), v_width=tuple(v_width),
        v_width_max=max((h * n for h, n in zip(hv, n_head_kv, strict=True)), default=0),
        state_bytes=tuple(state if r else 0 for r in recurrent),
        loaded=tuple(il < trunk for il in range(n_layer)),
        sliding=_int(key("attention.sliding_window"), 0) > 0)


def _state_bytes(key: Callable[[str], object], arch: str, n_embd: int, n_head: int,
                 head_k: int) -> int:
    """One recurrent layer's state for one sequence (llama_hparams::n_embd_r + n_embd_s)."""
    wkv = _int(key("wkv.head_size"), 0)
    if wkv:  # RWKV: the shifted tokens (token_shift_count, 2 by default) and the wkv state
        return F32 * (_int(key("token_shift_count"), 2) * n_embd + n_embd * wkv)
    conv = _int(key("ssm.conv_kernel"), 0)
    kda = _int(key("kda.head_dim"), 0)
    if kda:  # gated delta: Q, K and V convolutions (3 columns without a kernel), the state
        return F32 * (3 * (conv - 1 if conv > 0 else 3) * n_head * kda + kda * kda * n_head)
    if arch in LINEAR_ATTENTION:  # lightning attention: the key width squared per head
        return F32 * head_k * head_k * n_head
    inner = _int(key("ssm.inner_size"), 0)
    d_state = _int(key("ssm.state_size"), 0)
    groups = _int(key("ssm.group_count"), 0)
    l_cache = _int(key("shortconv.l_cache"), 0)
    if l_cache:  # LFM2's short convolutions
        return F32 * (n_embd * (l_cache - 1) + d_state * inner)
    return F32 * (max(conv - 1, 0) * (inner + 2 * groups * d_state) + d_state * inner)
