"""The memory plan (tuner/models/memplan.py) against llama.cpp's own figures: real CPU loads
of real GGUF files in several shapes, cache types and batch sizes (the load log's model, KV and
compute buffer sizes), SmolLM2, the real CUDA full-offload fixture and the CUDA compute buffers
recorded on H100/H200 (docs/benchmarks)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tuner.evidence.loadfacts import PlacementEvidence
from tuner.evidence.placement import parse_load_log
from tuner.models import memplan
from tuner.models.archgen import (
    write_deepseek2_mla,
    write_gemma3,
    write_kimi_linear,
    write_minimax01,
    write_qwen3moe,
    write_qwen35,
)
from tuner.models.gguftensors import GgufTable, Tensor, ggml_row_bytes, read_table
from tuner.models.memplan import MIB, Budget, Context, layout_of, place, read_layout
from tuner.models.modelgen import SHAPES, Shape, _tensors, quantize, write_llama, write_model

if TYPE_CHECKING:
    import gguf

FIXTURES = Path(__file__).parent / "fixtures"
# Compute buffers: the estimate's measured error (docs/partial-offload.md) is -6% / +6% on CPU
# for llama shapes; above the graph by up to 10% for the others (the hybrid's recurrent layers
# hold less than an attention layer).
COMPUTE_TOL = 0.07
COMPUTE_OVER = 0.10

# Three shapes unlike each other: grouped-query 4:2, full 8:8 with a wide vocabulary, 6:1 with
# a wide feed-forward; with SmolLM2 (9:3, tied embeddings) and a q4_k_m file.
SHAPE_A = Shape(n_layer=3, n_embd=256, n_head=4, n_head_kv=2, n_ff=768, n_vocab=1000,
                context_length=8192)
SHAPE_B = Shape(n_layer=2, n_embd=512, n_head=8, n_head_kv=8, n_ff=2048, n_vocab=8000,
                context_length=8192)
SHAPE_C = Shape(n_layer=2, n_embd=384, n_head=6, n_head_kv=1, n_ff=4096, n_vocab=600,
                context_length=8192)

LOAD = """
import sys
from llama_cpp import Llama
path, n_ctx, tk, tv, ub, fa = sys.argv[1:7]
types = {"f16": 1, "q8_0": 8, "q4_0": 2}
Llama(model_path=path, n_ctx=int(n_ctx), n_batch=max(int(ub), 512), n_ubatch=int(ub),
      type_k=types[tk], type_v=types[tv], flash_attn=fa == "1", n_gpu_layers=0, verbose=True)
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("memplan")
    out = {name: write_llama(d / f"{name}.gguf", **shape)
           for name, shape in (("a", SHAPE_A), ("b", SHAPE_B), ("c", SHAPE_C))}
    out["b-q4_k_m"] = quantize(out["b"], d / "b-q4_k_m.gguf", "q4_k_m")
    out["smollm2"] = smollm2_path
    out["gemma3"] = write_gemma3(d / "gemma3.gguf")
    out["deepseek2-mla"] = write_deepseek2_mla(d / "deepseek2-mla.gguf")
    out["qwen35"] = write_qwen35(d / "qwen35.gguf")
    out["qwen35-q4_k_m"] = quantize(out["qwen35"], d / "qwen35-q4_k_m.gguf", "q4_k_m")
    out["qwen3moe"] = write_qwen3moe(d / "qwen3moe.gguf")
    out["qwen3moe-q4_k_m"] = quantize(out["qwen3moe"], d / "qwen3moe-q4_k_m.gguf", "q4_k_m")
    out["kimi-linear"] = write_kimi_linear(d / "kimi-linear.gguf")
    out["minimax-01"] = write_minimax01(d / "minimax-01.gguf")
    return out


_RS_BUFFER = re.compile(r"(\S+) RS buffer size =\s*([\d.]+) MiB")


def _cpu_load(path: Path, n_ctx: int, kv: str, n_ubatch: int,
              fa: bool) -> tuple[PlacementEvidence, float]:
    """The load log's evidence and its recurrent-state (RS) buffer in MiB (0 without one)."""
    tk, tv = memplan.kv_pair(kv)
    proc = subprocess.run([sys.executable, "-c", LOAD, str(path), str(n_ctx), tk, tv,
                           str(n_ubatch), "1" if fa else "0"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rs = sum(float(m.group(2)) for m in _RS_BUFFER.finditer(proc.stderr))
    return parse_load_log(proc.stderr), rs


CASES = [
    ("a", 1000, "f16/f16", 512, False),
    ("a", 4000, "q8_0/q8_0", 256, True),
    ("b", 300, "f16/f16", 64, False),
    ("b-q4_k_m", 4000, "q4_0/q4_0", 256, True),
    ("c", 4000, "f16/f16", 256, False),
    ("c", 1000, "q8_0/q8_0", 512, True),
    ("smollm2", 2000, "q8_0/q8_0", 512, True),
    ("smollm2", 700, "f16/f16", 128, False),
    # Architectures whose caches are not a llama's (tuner/models/archgen.py)
    ("gemma3", 3000, "f16/f16", 256, False),
    ("gemma3", 1000, "q8_0/q8_0", 512, True),
    ("deepseek2-mla", 2000, "f16/f16", 256, False),
    ("deepseek2-mla", 5000, "q8_0/q8_0", 512, True),
    ("qwen35", 4000, "f16/f16", 256, True),
    ("qwen35-q4_k_m", 1000, "q8_0/q8_0", 512, True),
    ("qwen3moe", 1000, "f16/f16", 512, False),
    ("qwen3moe-q4_k_m", 2000, "q8_0/q8_0", 256, True),
    ("kimi-linear", 1000, "f16/f16", 256, False),
    ("kimi-linear", 3000, "q8_0/q8_0", 512, True),
    ("minimax-01", 1000, "f16/f16", 256, False),
    ("minimax-01", 2000, "q8_0/q8_0", 512, True),
]


@pytest.mark.parametrize(("model", "n_ctx", "kv", "n_ubatch", "fa"), CASES)
def test_plan_matches_a_real_cpu_load(models: dict[str, Path], model: str, n_ctx: int, kv: str,
                                      n_ubatch: int, fa: bool) -> None:
    ev, rs_mib = _cpu_load(models[model], n_ctx, kv, n_ubatch, fa)
    m = read_layout(models[model])
    tk, tv = memplan.kv_pair(kv)
    # Weights: every tensor once (a tied output shares token_embd on the host): exact to the
    # log's two decimals. An x86 host repacks some quantized matrices into a CPU_REPACK
    # buffer of their own, out of the mapped range (or beside it, within it). The mapped
    # range also spans the tensors llama.cpp skips (a prediction layer's) between others.
    weights = m.file_weights_bytes / MIB
    repack = ev.model_buffers_mib.get("CPU_REPACK", 0.0)
    skipped = m.skipped_bytes / MIB
    if repack or skipped:
        assert (weights - 0.01 <= ev.model_buffers_mib["CPU_Mapped"] + repack
                <= weights + repack + skipped + 0.01)
    else:
        assert ev.model_buffers_mib["CPU_Mapped"] == pytest.approx(weights, abs=0.01)
    # KV cache: K and V rows of each layer that keeps one (tuner/models/kvshape.py), the
    # context padded to 256; and the recurrent layers' states.
    assert ev.n_ctx == memplan.kv_size(n_ctx)
    kv_mib = sum(memplan.kv_bytes_per_token(m, tk, tv, fa)) * memplan.kv_size(n_ctx) / MIB
    assert ev.kv_buffers_mib["CPU"] == pytest.approx(kv_mib, abs=0.01)
    assert rs_mib == pytest.approx(sum(m.cache.state_bytes) / MIB, abs=0.01)
    # Compute: the graph's estimate, within the stated tolerance.
    predicted = memplan.compute_bytes(m, n_ubatch, n_ctx, fa) / MIB
    measured = ev.compute_buffers_mib["CPU"]
    assert measured * (1 - COMPUTE_TOL) <= predicted <= measured * (1 + COMPUTE_OVER)


def _layout(shape: str, matrix: str, output: str, embd: str) -> memplan.ModelLayout:
    """A layout of a modelgen shape with every matrix of type ``matrix`` (no file needed)."""
    sh = SHAPES[shape]
    tensors = []
    for name, dims in _tensors(sh["n_layer"], sh["n_embd"], sh["n_head"], sh["n_head_kv"],
                               sh["n_ff"], sh["n_vocab"]):
        t = "F32" if len(dims) == 1 else output if name == "output.weight" else \
            embd if name == "token_embd.weight" else matrix
        n = 1
        for d in dims:
            n *= d
        tensors.append(Tensor(name, t, tuple(reversed(dims)), ggml_row_bytes(t, n)))
    values: dict[str, object] = {
        "general.architecture": "llama", "llama.block_count": sh["n_layer"],
        "llama.embedding_length": sh["n_embd"], "llama.attention.head_count": sh["n_head"],
        "llama.attention.head_count_kv": sh["n_head_kv"],
        "llama.feed_forward_length": sh["n_ff"], "llama.vocab_size": sh["n_vocab"]}
    return layout_of(GgufTable(Path(f"{shape}.gguf"), 0, values, tuple(tensors)))


def test_plan_matches_the_real_cuda_full_offload_fixture() -> None:
    """The H100 log: a llama2-7b shape, Q4_0 with a Q6_K output, n_ctx 4096, f16 cache, flash
    attention, n_ubatch 512, every layer on CUDA0."""
    ev = parse_load_log((FIXTURES / "cuda-h100-full-offload.log").read_text())
    m = _layout("llama2-7b", "Q4_0", "Q6_K", "Q4_0")
    p = place(m, -1, Context(n_ctx=4096, n_ubatch=512, flash_attn=True))
    assert p.n_gpu_layers == 33 and p.output_on_gpu
    assert ev.model_buffers_mib["CUDA0"] == pytest.approx(p.gpu.weights / MIB, rel=0.001)
    assert ev.model_buffers_mib["CPU_Mapped"] == pytest.approx(p.host.weights / MIB, abs=0.01)
    assert ev.kv_buffers_mib["CUDA0"] == pytest.approx(p.gpu.kv / MIB, abs=0.01)
    # The estimate is above the graph here (feed-forward stage), never below it.
    measured = ev.compute_buffers_mib["CUDA0"]
    assert measured <= p.gpu.compute / MIB <= measured * 1.09


@pytest.mark.parametrize(("shape", "n_ubatch", "mib"), [
    # CUDA0 compute buffers of docs/benchmarks/run9-h100/trials.jsonl (qwen2.5-7b shape) and
    # docs/benchmarks/h200-trials.jsonl (llama3-8b shape), n_ctx 2176, either flash attention.
    ("qwen2.5-7b", 256, 152.0), ("qwen2.5-7b", 512, 304.0), ("qwen2.5-7b", 1024, 608.0),
    ("qwen2.5-7b", 2048, 1216.0), ("llama3-8b", 512, 258.5), ("llama3-8b", 1024, 517.0),
    ("llama3-8b", 2048, 1034.0),
])
def test_compute_estimate_matches_recorded_cuda_loads(shape: str, n_ubatch: int,
                                                      mib: float) -> None:
    m = _layout(shape, "Q4_K", "Q6_K", "Q4_K")
    for fa in (False, True):
        # The output stage: n_vocab + n_embd per token measured, n_vocab + 2 x n_embd planned
        assert mib <= memplan.compute_bytes(m, n_ubatch, 2176, fa) / MIB <= mib * 1.04


def test_partial_placement_follows_llama_cpp() -> None:
    m = _layout("qwen2.5-7b", "Q4_K", "Q6_K", "Q4_K")
    layers, output = memplan.gpu_layers(m, 8)
    assert layers == tuple(range(21, 28)) and output  # the output layer counts as one
    assert memplan.gpu_layers(m, 1) == ((), True)
    assert memplan.gpu_layers(m, 0) == ((), False)
    assert memplan.gpu_layers(m, -1) == (tuple(range(28)), True)
    ctx = Context(n_ctx=2176, n_ubatch=512)
    full, part = place(m, -1, ctx), place(m, 8, ctx)
    total_w = m.file_weights_bytes
    assert part.gpu.weights + part.host.weights == total_w == full.gpu.weights + full.host.weights
    assert part.gpu.kv == full.gpu.kv * 7 // 28 and part.host.kv == full.gpu.kv * 21 // 28
    # op offload: a host layer's weights are copied into the GPU's compute buffer
    assert part.gpu.compute == full.gpu.compute + max(m.layer_bytes)


def test_most_layers_per_cache_type_against_a_fake_budget() -> None:
    """A FAKE free-memory figure: the GPU of the issue with 4 GiB left."""
    m = _layout("qwen2.5-7b", "Q4_K", "Q6_K", "Q4_K")
    budget = Budget(free_mib=4096)
    f16 = Context(n_ctx=2176, n_ubatch=512)
    q8 = Context(n_ctx=2176, type_k="q8_0", type_v="q8_0", n_ubatch=512, flash_attn=True)
    n_f16, n_q8 = memplan.most_layers(m, budget, f16), memplan.most_layers(m, budget, q8)
    assert 0 < n_f16 <= n_q8 < m.n_offloadable
    assert place(m, n_f16, f16).gpu.total <= budget.usable_bytes < place(m, n_f16 + 1, f16).gpu.total
    assert memplan.most_layers(m, Budget(free_mib=80_000), f16) == m.n_offloadable
    assert memplan.most_layers(m, Budget(free_mib=500), f16) == 0
    capped = Budget(free_mib=80_000, max_vram_mib=4096)
    assert memplan.most_layers(m, capped, f16) < m.n_offloadable
    plan = memplan.make_plan(m, 2176, budget)
    assert not plan.fits_full and plan.best_layers() >= n_q8
    text = "\n".join(plan.lines())
    assert "does NOT fit at full offload" in text and f"{n_f16:>3} layers" in text


def test_per_layer_head_counts_are_read(tmp_path: Path) -> None:
    def keys(w: gguf.GGUFWriter) -> None:
        w.add_block_count(3)
        w.add_embedding_length(256)
        w.add_feed_forward_length(512)
        w.add_head_count(4)
        w.add_head_count_kv([2, 0, 4])

    write_model(tmp_path / "arr.gguf", "llama", keys, [("token_embd.weight", (600, 256))],
                n_vocab=600, sparse=True)
    m = read_layout(tmp_path / "arr.gguf")
    assert m.cache.k_width == m.cache.v_width == (128, 0, 256)
    assert memplan.kv_bytes_per_token(m, "f16", "f16") == (2 * 128 * 2, 0, 2 * 256 * 2)
    assert memplan.kv_bytes_per_token(m, "q8_0", "q8_0") == (2 * 128 // 32 * 34, 0,
                                                             2 * 256 // 32 * 34)
    # Without flash attention V is stored transposed, every row as wide as the widest
    assert memplan.kv_bytes_per_token(m, "f16", "f16", flash_attn=False) == (
        128 * 2 + 256 * 2, 0, 2 * 256 * 2)


def test_experts_on_the_host_for_a_mixture_of_experts(models: dict[str, Path]) -> None:
    """A FAKE budget between the qwen3moe file's full offload and its full offload with two
    layers' experts on the host: the plan names the fewest first layers whose experts (the *_exps tensors
    llama-server's --n-cpu-moe moves) on the host make every layer fit."""
    m = read_layout(models["qwen3moe"])
    exps = [t.nbytes for t in read_table(models["qwen3moe"]).tensors if "_exps." in t.name]
    assert sum(m.expert_bytes) == sum(exps) and len(exps) == 3 * m.n_layer
    ctx = Context(n_ctx=2048, n_ubatch=256)
    whole, one, two = (place(m, -1, dataclasses.replace(ctx, experts_on_host=k))
                       for k in (0, 1, 2))
    assert one.gpu.weights == whole.gpu.weights - m.expert_bytes[0]
    assert one.host.weights == whole.host.weights + m.expert_bytes[0]
    # op offload copies a host layer's experts into the GPU's compute buffer for a batch: one
    # layer's experts on the host save nothing, two save one layer's
    assert one.gpu.compute == whole.gpu.compute + m.expert_bytes[0]
    assert two.gpu.total == whole.gpu.total - m.expert_bytes[1]
    budget = Budget(free_mib=(two.gpu.total + 1024) / MIB, overhead_mib=0, margin_mib=0)
    assert whole.gpu.total > budget.usable_bytes >= two.gpu.total
    assert memplan.fewest_experts_on_host(m, budget, ctx) == 2
    plan = memplan.make_plan(m, 2048, budget, kv_caches=("f16/f16",), n_ubatches=(256,))
    assert not plan.fits_full and plan.experts_host == (("f16/f16", 2),)
    assert "kv f16/f16: K 2), as llama-server's --n-cpu-moe K" in "\n".join(plan.lines())
    # A dense model has no experts to move
    assert memplan.fewest_experts_on_host(read_layout(models["a"]), budget, ctx) is None
