"""A recurrent model (Mamba: a state per layer, no attention, no KV cache at all) tuned end to
end: its load log's recurrent-state buffer is the placement evidence where a KV cache would be,
the cache type is not asked of a log that has no cache, and the default space does not search
the cache type or flash attention, which change nothing there. Before, every trial of such a
model was unverified ("the log does not show the K cache type") and no config was written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_run import tuner
from tuner.evidence.placement import Expectation, parse_load_log, verify
from tuner.models import memplan
from tuner.models.archgen import write_kimi_linear, write_mamba, write_rwkv6
from tuner.search.space import default_space

CUDA_LOG = (Path(__file__).parent / "fixtures" / "cuda-h100-full-offload.log").read_text()
LOAD = """
import sys
from llama_cpp import Llama
Llama(model_path=sys.argv[1], n_ctx=1024, n_ubatch=256, n_gpu_layers=0, verbose=True)
"""


@pytest.fixture(scope="module")
def mamba(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mamba(tmp_path_factory.mktemp("mamba") / "mamba.gguf")


@pytest.fixture(scope="module")
def rwkv6(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rwkv6(tmp_path_factory.mktemp("rwkv6") / "rwkv6.gguf")


@pytest.fixture(scope="module")
def kimi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_kimi_linear(tmp_path_factory.mktemp("kimi") / "kimi-linear.gguf")


@pytest.mark.parametrize("arch", ["mamba", "rwkv6"])
def test_a_real_cpu_load_shows_the_state_and_is_verified(arch: str,
                                                         request: pytest.FixtureRequest) -> None:
    """The plan's weights and recurrent state (Mamba's convolution and state; RWKV's shifted
    tokens and wkv state, unpriced before: 0) against a real load's buffers."""
    model: Path = request.getfixturevalue(arch)
    proc = subprocess.run([sys.executable, "-c", LOAD, str(model)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ev = parse_load_log(proc.stderr)
    assert ev.kv_buffers_mib == {} and ev.kv_types is None
    layout = memplan.read_layout(model)
    state = sum(layout.cache.state_bytes) / memplan.MIB
    assert state > 0.05 and ev.state_buffers_mib["CPU"] == pytest.approx(state, abs=0.01)
    assert ev.model_buffers_mib["CPU_Mapped"] == pytest.approx(
        layout.file_weights_bytes / memplan.MIB, abs=0.01)
    verdict = verify(ev, Expectation(device="cpu", type_k="f16", type_v="f16"))
    assert verdict.verified, verdict.reasons
    assert "no KV cache, recurrent state on CPU" in verdict.summary


def _state_instead_of_kv(device: str) -> str:
    """The real CUDA full-offload log with its KV cache lines replaced by the one line a
    recurrent model's memory prints instead (llama-memory-recurrent.cpp), on ``device``."""
    text = re.sub(r"llama_kv_cache: .*\n", "", CUDA_LOG)
    return text.replace("llama_context: n_ctx_seq", f"llama_memory_recurrent: {device:>10} RS "
                        "buffer size =     2.50 MiB\nllama_context: n_ctx_seq", 1)


def test_cuda_state_on_the_gpu_or_not() -> None:
    """EDITED FIXTURE: the real H100 log, its KV lines swapped for a recurrent state's."""
    assert "llama_memory_recurrent" in _state_instead_of_kv("CUDA0")
    cuda = Expectation(device="cuda", type_k="f16", type_v="f16")
    on_gpu = verify(parse_load_log(_state_instead_of_kv("CUDA0")), cuda)
    assert on_gpu.verified, on_gpu.reasons
    on_host = verify(parse_load_log(_state_instead_of_kv("CPU")), cuda)
    assert on_host.reasons == ["a 2.50 MiB recurrent-state buffer on CPU, not on the GPU"]


def test_no_cache_type_or_flash_attention_searched_without_a_kv_cache() -> None:
    for device in ("cpu", "cuda"):
        plain, recurrent = (default_space(device, ["installed"], attention=a)
                            for a in (True, False))
        assert len(plain.kv_cache) > 1 and plain.flash_attn == [False, True]
        assert recurrent.kv_cache == ["f16/f16"] and recurrent.flash_attn == [False]
        assert recurrent.n_batch == plain.n_batch and recurrent.n_ubatch == plain.n_ubatch


def test_a_recurrent_model_is_tuned_and_its_config_written(mamba: Path, tmp_path: Path) -> None:
    out = tmp_path / "configs" / "production.yaml"
    proc = tuner("sweep", "--model", mamba, "--device", "cpu", "--prompt-tokens", 64,
                 "--gen-tokens", 8, "--repetitions", 1, "--trials", 2, "--finalist-rounds", 0,
                 "--results", tmp_path / "results", "--out", out)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    assert "the model keeps no KV cache (a recurrent model)" in text
    assert "no KV cache, recurrent state on CPU" in text and out.is_file()


def test_a_gated_delta_hybrid_is_priced_and_tuned(kimi: Path, tmp_path: Path) -> None:
    """Kimi-Linear (gated delta "KDA" layers, recurrent, with every 4th layer MLA attention):
    its KDA layers' state, unpriced before (0), is the real load's RS buffer; a CPU sweep
    proves and writes it."""
    proc = subprocess.run([sys.executable, "-c", LOAD, str(kimi)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ev = parse_load_log(proc.stderr)
    layout = memplan.read_layout(kimi)
    state = sum(layout.cache.state_bytes) / memplan.MIB
    assert [b > 0 for b in layout.cache.state_bytes] == [True, True, True, False]
    assert ev.state_buffers_mib["CPU"] == pytest.approx(state, abs=0.01) and state > 0.2
    kv = sum(memplan.kv_bytes_per_token(layout, "f16", "f16")) * memplan.kv_size(1024)
    assert ev.kv_buffers_mib["CPU"] == pytest.approx(kv / memplan.MIB, abs=0.01)
    out = tmp_path / "configs" / "production.yaml"
    sweep = tuner("sweep", "--model", kimi, "--device", "cpu", "--prompt-tokens", 64,
                  "--gen-tokens", 8, "--repetitions", 1, "--trials", 2, "--finalist-rounds", 0,
                  "--results", tmp_path / "results", "--out", out)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert "KV cache on CPU" in sweep.stdout + sweep.stderr and out.is_file()
