"""Small real GGUF files of architectures whose caches are not a llama's, written with the
``gguf`` package (tuner.models.modelgen.write_model), random weights that llama.cpp loads and
runs: for the memory plan's checks against llama.cpp's own loads (tests/test_memplan.py on the
CPU, benchmarks/arch_placement.py per device on a GPU):

- gemma3: sliding-window layers (5 of each 6), a head width unlike n_embd / n_head, tied
  embeddings; llama-cpp-python keeps llama.cpp's ``swa_full`` (on): every layer's cache holds
  the whole context;
- deepseek2 with multi-head latent attention (MLA): one K row of kv_lora_rank + the rope
  width per token and layer, no V cache;
- qwen3moe: mixture-of-experts layers (a router and 3-D expert tensors, a few experts used
  per token), whose feed-forward activations are the used experts', not ``feed_forward_length``;
- qwen35: a hybrid whose layers are gated delta nets (recurrent state, no KV cache) but every
  ``full_attention_interval``-th one; one multi-token-prediction layer (nextn) at the end,
  which llama.cpp neither loads nor caches by default;
- mamba and rwkv6: recurrent throughout, no KV cache at all;
- kimi-linear: gated delta ("KDA") layers with Q, K and V convolutions, and MLA every 4th;
- minimax-01: lightning (linear) attention layers, softmax attention every 8th.

MOE_SHAPES and ``python -m tuner.models.archgen`` write a mixture of experts of a real model's
size for the GPU benchmarks.

The tensor names and shapes follow the vendored llama.cpp's loaders (src/models/*.cpp)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tuner.models.modelgen import write_model

if TYPE_CHECKING:
    import gguf

Layout = list[tuple[str, tuple[int, ...]]]
N_VOCAB = 600


def _shape_keys(w: gguf.GGUFWriter, name: str, *, n_layer: int, n_embd: int, n_ff: int,
                n_head: int, n_head_kv: int | list[int], head_k: int, head_v: int) -> None:
    """The keys every writer here sets: its name, the context, widths and head counts."""
    w.add_name(f"tuner synthetic {name}")
    w.add_context_length(8192)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_k)
    w.add_value_length(head_v)
    w.add_layer_norm_rms_eps(1e-6)


def _normed_attention(b: str, n_embd: int, n_head: int, n_head_kv: int, head_dim: int,
                      q_rows: int | None = None) -> Layout:
    """Q, K, V and output projections with per-head Q and K norms (gemma3, qwen3 and their
    kin); ``q_rows``: a wider Q (qwen35's gated query)."""
    q, kv = n_head * head_dim, n_head_kv * head_dim
    return [(f"{b}.attn_q.weight", (q_rows or q, n_embd)), (f"{b}.attn_k.weight", (kv, n_embd)),
            (f"{b}.attn_v.weight", (kv, n_embd)), (f"{b}.attn_output.weight", (n_embd, q)),
            (f"{b}.attn_q_norm.weight", (head_dim,)), (f"{b}.attn_k_norm.weight", (head_dim,))]


def _ffn(b: str, n_embd: int, n_ff: int, norm: bool = True) -> Layout:
    """A dense gated feed-forward, with its own input norm unless ``norm`` is off."""
    return [*([(f"{b}.ffn_norm.weight", (n_embd,))] if norm else []),
            (f"{b}.ffn_gate.weight", (n_ff, n_embd)), (f"{b}.ffn_up.weight", (n_ff, n_embd)),
            (f"{b}.ffn_down.weight", (n_embd, n_ff))]


def write_gemma3(path: Path, *, n_layer: int = 7, n_embd: int = 256, n_head: int = 4,
                 n_head_kv: int = 2, head_dim: int = 128, n_ff: int = 512,
                 window: int = 256) -> Path:
    """Gemma 3: layers 0-4 slide over ``window`` tokens, layer 5 attends globally (pattern 6)."""
    def keys(w: gguf.GGUFWriter) -> None:
        _shape_keys(w, "gemma3", n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_head=n_head,
                    n_head_kv=n_head_kv, head_k=head_dim, head_v=head_dim)
        w.add_sliding_window(window)
        w.add_rope_freq_base(1e6)

    layout: Layout = [("token_embd.weight", (N_VOCAB, n_embd))]
    for i in range(n_layer):
        b = f"blk.{i}"
        layout += [(f"{b}.attn_norm.weight", (n_embd,)),
                   *_normed_attention(b, n_embd, n_head, n_head_kv, head_dim),
                   (f"{b}.post_attention_norm.weight", (n_embd,)),
                   *_ffn(b, n_embd, n_ff), (f"{b}.post_ffw_norm.weight", (n_embd,))]
    layout.append(("output_norm.weight", (n_embd,)))  # no output.weight: tied embeddings
    return write_model(path, "gemma3", keys, layout, n_vocab=N_VOCAB)


def write_deepseek2_mla(path: Path, *, n_layer: int = 2, n_embd: int = 256, n_head: int = 4,
                        kv_lora_rank: int = 128, rope: int = 32, nope: int = 64,
                        v_head: int = 64, n_ff: int = 512) -> Path:
    """DeepSeek-V2-style attention with MLA, as the current converter writes it (key_length
    kv_lora_rank + rope, value_length kv_lora_rank, one KV head, split k_b / v_b); every
    layer dense (leading_dense_block_count = n_layer), no q LoRA."""
    def keys(w: gguf.GGUFWriter) -> None:
        _shape_keys(w, "deepseek2 mla", n_layer=n_layer, n_embd=n_embd, n_ff=n_ff,
                    n_head=n_head, n_head_kv=1, head_k=kv_lora_rank + rope, head_v=kv_lora_rank)
        w.add_key_length_mla(nope + rope)
        w.add_value_length_mla(v_head)
        w.add_rope_dimension_count(rope)
        w.add_rope_freq_base(10000.0)
        w.add_leading_dense_block_count(n_layer)
        w.add_q_lora_rank(0)
        w.add_kv_lora_rank(kv_lora_rank)
        w.add_expert_feed_forward_length(n_ff)
        w.add_expert_shared_count(0)

    layout: Layout = [("token_embd.weight", (N_VOCAB, n_embd))]
    for i in range(n_layer):
        b = f"blk.{i}"
        layout += [(f"{b}.attn_norm.weight", (n_embd,)),
                   (f"{b}.attn_kv_a_norm.weight", (kv_lora_rank,)),
                   (f"{b}.attn_q.weight", (n_head * (nope + rope), n_embd)),
                   (f"{b}.attn_kv_a_mqa.weight", (kv_lora_rank + rope, n_embd)),
                   (f"{b}.attn_k_b.weight", (n_head, kv_lora_rank, nope)),
                   (f"{b}.attn_v_b.weight", (n_head, v_head, kv_lora_rank)),
                   (f"{b}.attn_output.weight", (n_embd, n_head * v_head)),
                   *_ffn(b, n_embd, n_ff)]
    layout += [("output_norm.weight", (n_embd,)), ("output.weight", (N_VOCAB, n_embd))]
    return write_model(path, "deepseek2", keys, layout, n_vocab=N_VOCAB)


def write_qwen35(path: Path, *, n_trunk: int = 4, n_embd: int = 256, n_head: int = 4,
                 n_head_kv: int = 2, head_dim: int = 64, n_ff: int = 512, interval: int = 4,
                 d_conv: int = 4, d_state: int = 64, n_group: int = 2,
                 n_v_heads: int = 4) -> Path:
    """Qwen3.5: ``n_trunk`` layers, every ``interval``-th one full attention (with a gated
    query: Q twice as wide), the others gated delta nets; and one MTP layer after them."""
    key_dim, value_dim = d_state * n_group, d_state * n_v_heads
    n_all = n_trunk + 1

    def keys(w: gguf.GGUFWriter) -> None:
        _shape_keys(w, "qwen35", n_layer=n_all, n_embd=n_embd, n_ff=n_ff, n_head=n_head,
                    n_head_kv=n_head_kv, head_k=head_dim, head_v=head_dim)
        w.add_rope_dimension_count(head_dim // 4)
        w.add_rope_dimension_sections([head_dim // 8, head_dim // 16, head_dim // 16, 0])
        w.add_rope_freq_base(1e7)
        w.add_full_attention_interval(interval)
        w.add_ssm_conv_kernel(d_conv)
        w.add_ssm_inner_size(value_dim)
        w.add_ssm_state_size(d_state)
        w.add_ssm_time_step_rank(n_v_heads)
        w.add_ssm_group_count(n_group)
        w.add_nextn_predict_layers(1)

    layout: Layout = [("token_embd.weight", (N_VOCAB, n_embd))]
    for i in range(n_all):
        b = f"blk.{i}"
        layout += [(f"{b}.attn_norm.weight", (n_embd,)),
                   (f"{b}.post_attention_norm.weight", (n_embd,))]
        if i >= n_trunk or (i + 1) % interval == 0:
            layout += _normed_attention(b, n_embd, n_head, n_head_kv, head_dim,
                                        q_rows=2 * n_head * head_dim)
        else:
            layout += [(f"{b}.attn_qkv.weight", (key_dim * 2 + value_dim, n_embd)),
                       (f"{b}.attn_gate.weight", (value_dim, n_embd)),
                       (f"{b}.ssm_conv1d.weight", (key_dim * 2 + value_dim, d_conv)),
                       (f"{b}.ssm_dt.bias", (n_v_heads,)), (f"{b}.ssm_a", (n_v_heads,)),
                       (f"{b}.ssm_beta.weight", (n_v_heads, n_embd)),
                       (f"{b}.ssm_alpha.weight", (n_v_heads, n_embd)),
                       (f"{b}.ssm_norm.weight", (d_state,)),
                       (f"{b}.ssm_out.weight", (n_embd, value_dim))]
        layout += _ffn(b, n_embd, n_ff, norm=False)  # post_attention_norm is its input norm
        if i >= n_trunk:
            layout += [(f"{b}.nextn.eh_proj.weight", (n_embd, 2 * n_embd)),
                       (f"{b}.nextn.enorm.weight", (n_embd,)),
                       (f"{b}.nextn.hnorm.weight", (n_embd,))]
    layout += [("output_norm.weight", (n_embd,)), ("output.weight", (N_VOCAB, n_embd))]
    return write_model(path, "qwen35", keys, layout, n_vocab=N_VOCAB)



def write_qwen3moe(path: Path, *, n_layer: int = 2, n_embd: int = 256, n_head: int = 4,
                   n_head_kv: int = 2, head_dim: int = 64, n_ff: int = 256, n_expert: int = 8,
                   n_expert_used: int = 4, n_ff_exp: int = 512) -> Path:
    """Qwen3-MoE: every layer's feed-forward ``n_expert`` experts of width ``n_ff_exp``,
    ``n_expert_used`` per token; ``feed_forward_length`` as small as the converter may write."""
    def keys(w: gguf.GGUFWriter) -> None:
        _shape_keys(w, "qwen3moe", n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_head=n_head,
                    n_head_kv=n_head_kv, head_k=head_dim, head_v=head_dim)
        w.add_rope_dimension_count(head_dim)
        w.add_rope_freq_base(1e6)
        w.add_expert_count(n_expert)
        w.add_expert_used_count(n_expert_used)
        w.add_expert_feed_forward_length(n_ff_exp)

    layout = qwen3moe_layout(n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                             n_head_kv=n_head_kv, head_dim=head_dim, n_expert=n_expert,
                             n_ff_exp=n_ff_exp)
    return write_model(path, "qwen3moe", keys, layout, n_vocab=N_VOCAB)


def qwen3moe_layout(*, n_layer: int, n_embd: int, n_head: int, n_head_kv: int, head_dim: int,
                    n_expert: int, n_ff_exp: int, **_: int) -> Layout:
    """write_qwen3moe's tensors (name, numpy shape)."""
    layout: Layout = [("token_embd.weight", (N_VOCAB, n_embd))]
    for i in range(n_layer):
        b = f"blk.{i}"
        layout += [(f"{b}.attn_norm.weight", (n_embd,)),
                   *_normed_attention(b, n_embd, n_head, n_head_kv, head_dim),
                   (f"{b}.ffn_norm.weight", (n_embd,)),
                   (f"{b}.ffn_gate_inp.weight", (n_expert, n_embd)),
                   (f"{b}.ffn_gate_exps.weight", (n_expert, n_ff_exp, n_embd)),
                   (f"{b}.ffn_down_exps.weight", (n_expert, n_embd, n_ff_exp)),
                   (f"{b}.ffn_up_exps.weight", (n_expert, n_ff_exp, n_embd))]
    return layout + [("output_norm.weight", (n_embd,)), ("output.weight", (N_VOCAB, n_embd))]


# Mixture-of-experts shapes of real models for GPU benchmarks (random weights, this module's
# 600-token vocabulary): OLMoE-1B-7B's sizes as a qwen3moe, 16 layers of 64 experts of which
# 8 per token: 6.7 B weights, 12.5 GiB at f16, about 3.8 GiB at q4_k_m.
MOE_SHAPES: dict[str, dict[str, int]] = {
    "olmoe-7b": {"n_layer": 16, "n_embd": 2048, "n_head": 16, "n_head_kv": 16,
                 "head_dim": 128, "n_ff": 1024, "n_expert": 64, "n_expert_used": 8,
                 "n_ff_exp": 1024},
}


def main(argv: list[str] | None = None) -> int:
    """Write a mixture of experts of a known shape at f16 (benchmarks/gpu_session.sh quantizes
    it): python -m tuner.models.archgen --shape olmoe-7b --out FILE."""
    import argparse  # noqa: PLC0415 - the command line only
    import time  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="python -m tuner.models.archgen", description=main.__doc__)
    p.add_argument("--shape", choices=sorted(MOE_SHAPES), required=True)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    write_qwen3moe(args.out, **MOE_SHAPES[args.shape])
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**30:.2f} GiB, {args.shape}) in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    return 0


def write_kimi_linear(path: Path, *, n_layer: int = 4, n_embd: int = 256, n_head: int = 4,
                      kda_head: int = 64, d_conv: int = 4, kv_lora_rank: int = 64,
                      rope: int = 32, nope: int = 32, v_head: int = 64, n_ff: int = 256,
                      n_expert: int = 4, n_expert_used: int = 2, n_ff_exp: int = 128) -> Path:
    """Kimi-Linear: gated delta ("KDA") layers, recurrent, with a short convolution of Q, K and
    V, and every 4th layer multi-head latent attention (head_count_kv 0 marks a KDA layer, 1
    an MLA one, as the converter writes them: conversion/kimi_linear.py); layer 0's
    feed-forward dense, the others' a mixture of experts with one shared expert."""
    kv_heads = [1 if (il + 1) % 4 == 0 else 0 for il in range(n_layer)]

    def keys(w: gguf.GGUFWriter) -> None:
        _shape_keys(w, "kimi-linear", n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_head=n_head,
                    n_head_kv=kv_heads, head_k=kv_lora_rank + rope, head_v=kv_lora_rank)
        w.add_ssm_conv_kernel(d_conv)
        w.add_kda_head_dim(kda_head)
        w.add_kv_lora_rank(kv_lora_rank)
        w.add_rope_dimension_count(rope)
        w.add_rope_freq_base(10000.0)
        w.add_key_length_mla(nope + rope)
        w.add_value_length_mla(v_head)
        w.add_expert_count(n_expert)
        w.add_expert_used_count(n_expert_used)
        w.add_expert_feed_forward_length(n_ff_exp)
        w.add_expert_shared_count(1)
        w.add_leading_dense_block_count(1)
        w.add_expert_weights_scale(1.0)
        from gguf import ExpertGatingFuncType  # noqa: PLC0415 - as write_model imports gguf

        w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)

    inner = n_head * kda_head
    layout: Layout = [("token_embd.weight", (N_VOCAB, n_embd))]
    for i in range(n_layer):
        b = f"blk.{i}"
        layout.append((f"{b}.attn_norm.weight", (n_embd,)))
        if kv_heads[i] == 0:  # KDA
            layout += [(f"{b}.ssm_conv1d_{x}.weight", (inner, 1, d_conv)) for x in "qkv"]
            layout += [(f"{b}.attn_{x}.weight", (inner, n_embd)) for x in "qkv"]
            layout += [(f"{b}.ssm_f_a.weight", (kda_head, n_embd)),
                       (f"{b}.ssm_f_b.weight", (inner, kda_head)),
                       (f"{b}.ssm_beta.weight", (n_head, n_embd)),
                       (f"{b}.ssm_a", (n_head, 1)),
                       (f"{b}.ssm_dt.bias", (inner,)),
                       (f"{b}.ssm_g_a.weight", (kda_head, n_embd)),
                       (f"{b}.ssm_g_b.weight", (inner, kda_head)),
                       (f"{b}.ssm_norm.weight", (kda_head,)),
                       (f"{b}.attn_output.weight", (n_embd, inner))]
        else:  # MLA, no q LoRA, split k_b / v_b (the MLA KV cache)
            layout += [(f"{b}.attn_kv_a_norm.weight", (kv_lora_rank,)),
                       (f"{b}.attn_q.weight", (n_head * (nope + rope), n_embd)),
                       (f"{b}.attn_kv_a_mqa.weight", (kv_lora_rank + rope, n_embd)),
                       (f"{b}.attn_k_b.weight", (n_head, kv_lora_rank, nope)),
                       (f"{b}.attn_v_b.weight", (n_head, v_head, kv_lora_rank)),
                       (f"{b}.attn_output.weight", (n_embd, n_head * v_head))]
        if i == 0:
            layout += _ffn(b, n_embd, n_ff)
        else:
            layout += [(f"{b}.ffn_norm.weight", (n_embd,)),
                       (f"{b}.ffn_gate_inp.weight", (n_expert, n_embd)),
                       (f"{b}.ffn_gate_exps.weight", (n_expert, n_ff_exp, n_embd)),
                       (f"{b}.ffn_down_exps.weight", (n_expert, n_embd, n_ff_exp)),
                       (f"{b}.ffn_up_exps.weight", (n_expert, n_ff_exp, n_embd)),
                       (f"{b}.ffn_gate_shexp.weight", (n_ff_exp, n_embd)),
                       (f"{b}.ffn_down_shexp.weight", (n_embd, n_ff_exp)),
                       (f"{b}.ffn_up_shexp.weight", (n_ff_exp, n_embd)),
                       (f"{b}.exp_probs_b.bias", (n_expert,))]
    layout += [("output_norm.weight", (n_embd,)), ("output.weight", (N_VOCAB, n_embd))]
    return write_model(path, "kimi-linear", keys, layout, n_vocab=N_VOCAB)


def write_minimax01(path: Path, *, n_layer: int = 8, n_embd: int = 256, n_head: int = 4,
                    n_head_kv: int = 2, head_dim: int = 64, n_expert: int = 4,
                    n_expert_used: int = 2, n_ff: int = 128) -> Path:
    """MiniMax-01: lightning (linear) attention in 7 of each 8 layers, recurrent, with a fused
    QKV, a gate and a norm; every 8th layer softmax attention; every feed-forward a mixture of
    experts of width ``feed_forward_length``."""
    def keys(w: gguf.GGUFWriter) -> None:
        _shape_keys(w, "minimax-01", n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_head=n_head,
                    n_head_kv=n_head_kv, head_k=head_dim, head_v=head_dim)
        w.add_rope_dimension_count(head_dim)
        w.add_rope_freq_base(10000.0)
        w.add_residual_scale(1.0)
        w.add_full_attention_interval(8)
        w.add_expert_count(n_expert)
        w.add_expert_used_count(n_expert_used)

    width = n_head * head_dim
    layout: Layout = [("token_embd.weight", (N_VOCAB, n_embd))]
    for i in range(n_layer):
        b = f"blk.{i}"
        layout.append((f"{b}.attn_norm.weight", (n_embd,)))
        if (i + 1) % 8 != 0:  # lightning attention
            layout += [(f"{b}.attn_norm_2.weight", (width,)),
                       (f"{b}.attn_qkv.weight", (3 * width, n_embd)),
                       (f"{b}.attn_gate.weight", (width, n_embd))]
        else:
            kv = n_head_kv * head_dim
            layout += [(f"{b}.attn_q.weight", (width, n_embd)),
                       (f"{b}.attn_k.weight", (kv, n_embd)), (f"{b}.attn_v.weight", (kv, n_embd))]
        layout += [(f"{b}.attn_output.weight", (n_embd, width)),
                   (f"{b}.ffn_norm.weight", (n_embd,)),
                   (f"{b}.ffn_gate_inp.weight", (n_expert, n_embd)),
                   (f"{b}.ffn_gate_exps.weight", (n_expert, n_ff, n_embd)),
                   (f"{b}.ffn_down_exps.weight", (n_expert, n_embd, n_ff)),
                   (f"{b}.ffn_up_exps.weight", (n_expert, n_ff, n_embd))]
    layout += [("output_norm.weight", (n_embd,)), ("output.weight", (N_VOCAB, n_embd))]
    return write_model(path, "minimax-01", keys, layout, n_vocab=N_VOCAB)


def write_rwkv6(path: Path, *, n_layer: int = 2, n_embd: int = 256, head_size: int = 64,
                n_ff: int = 512, mix_extra: int = 32, decay_extra: int = 64) -> Path:
    """RWKV6: every layer a linear-attention recurrence with token shifts, no KV cache (its
    converter writes 0 heads); the tensors of the vendored rwkv6.cpp, the five time-mix
    interpolations fused."""
    def keys(w: gguf.GGUFWriter) -> None:
        _shape_keys(w, "rwkv6", n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_head=0,
                    n_head_kv=0, head_k=0, head_v=0)
        w.add_layer_norm_eps(1e-5)
        w.add_wkv_head_size(head_size)
        w.add_time_mix_extra_dim(mix_extra)
        w.add_time_decay_extra_dim(decay_extra)
        w.add_rescale_every_n_layers(6)

    layout: Layout = [("token_embd.weight", (N_VOCAB, n_embd)),
                      ("token_embd_norm.weight", (n_embd,)), ("token_embd_norm.bias", (n_embd,))]
    for i in range(n_layer):
        b = f"blk.{i}"
        layout += [(f"{b}.{n}.{p}", (n_embd,)) for n in ("attn_norm", "attn_norm_2",
                                                         "time_mix_ln") for p in ("weight", "bias")]
        layout += [(f"{b}.time_mix_w1.weight", (mix_extra * 5, n_embd)),
                   (f"{b}.time_mix_w2.weight", (5, n_embd, mix_extra)),
                   (f"{b}.time_mix_lerp_x.weight", (1, 1, n_embd)),
                   (f"{b}.time_mix_lerp_fused.weight", (5, 1, 1, n_embd)),
                   (f"{b}.time_mix_first.weight", (n_embd // head_size, head_size)),
                   (f"{b}.time_mix_decay.weight", (n_embd,)),
                   (f"{b}.time_mix_decay_w1.weight", (decay_extra, n_embd)),
                   (f"{b}.time_mix_decay_w2.weight", (n_embd, decay_extra))]
        layout += [(f"{b}.time_mix_{n}.weight", (n_embd, n_embd))
                   for n in ("key", "value", "receptance", "gate", "output")]
        layout += [(f"{b}.channel_mix_lerp_k.weight", (1, 1, n_embd)),
                   (f"{b}.channel_mix_lerp_r.weight", (1, 1, n_embd)),
                   (f"{b}.channel_mix_key.weight", (n_ff, n_embd)),
                   (f"{b}.channel_mix_value.weight", (n_embd, n_ff)),
                   (f"{b}.channel_mix_receptance.weight", (n_embd, n_embd))]
    layout += [("output_norm.weight", (n_embd,)), ("output_norm.bias", (n_embd,)),
               ("output.weight", (N_VOCAB, n_embd))]
    return write_model(path, "rwkv6", keys, layout, n_vocab=N_VOCAB)


def write_mamba(path: Path, *, n_layer: int = 2, n_embd: int = 256, d_conv: int = 4,
                d_state: int = 16, dt_rank: int = 16) -> Path:
    """Mamba: every layer a selective state space, no attention and no KV cache at all (its
    converter writes 0 heads); d_inner 2 x n_embd, the only expansion llama.cpp takes."""
    d_inner = 2 * n_embd

    def keys(w: gguf.GGUFWriter) -> None:
        _shape_keys(w, "mamba", n_layer=n_layer, n_embd=n_embd, n_ff=0, n_head=0,
                    n_head_kv=0, head_k=0, head_v=0)
        w.add_ssm_conv_kernel(d_conv)
        w.add_ssm_inner_size(d_inner)
        w.add_ssm_state_size(d_state)
        w.add_ssm_time_step_rank(dt_rank)

    layout: Layout = [("token_embd.weight", (N_VOCAB, n_embd))]
    for i in range(n_layer):
        b = f"blk.{i}"
        layout += [(f"{b}.attn_norm.weight", (n_embd,)),
                   (f"{b}.ssm_in.weight", (2 * d_inner, n_embd)),
                   (f"{b}.ssm_conv1d.weight", (d_inner, d_conv)),
                   (f"{b}.ssm_conv1d.bias", (d_inner,)),
                   (f"{b}.ssm_x.weight", (dt_rank + 2 * d_state, d_inner)),
                   (f"{b}.ssm_dt.weight", (d_inner, dt_rank)), (f"{b}.ssm_dt.bias", (d_inner,)),
                   (f"{b}.ssm_a", (d_inner, d_state)), (f"{b}.ssm_d", (d_inner,)),
                   (f"{b}.ssm_out.weight", (n_embd, d_inner))]
    layout += [("output_norm.weight", (n_embd,)), ("output.weight", (N_VOCAB, n_embd))]
    return write_model(path, "mamba", keys, layout, n_vocab=N_VOCAB)


if __name__ == "__main__":
    raise SystemExit(main())
