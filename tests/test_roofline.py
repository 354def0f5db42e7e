"""The roofline: the peak table, the parameter count read from a real GGUF header (checked
against the gguf package's own reader), and the shares of a real CPU sweep's trials and of
the real H200 study."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.report_data import h200_results
from tuner.errors import BadModel
from tuner.models.ggufshape import read_shape
from tuner.reports.roofline import peak_for, roofline
from tuner.results.studystore import default_storage, records_of


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", "H100 NVL"), ("NVIDIA H200", "H200 SXM"), ("NVIDIA H200 NVL", "H200 NVL"),
    ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM"), ("NVIDIA A100-SXM4-40GB", "A100 40GB"),
    ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe"), ("NVIDIA A100-PCIE-40GB", "A100 40GB"),
    ("NVIDIA L40S", "L40S"), ("NVIDIA L40", "L40"), ("NVIDIA L4", "L4"), ("NVIDIA A10", "A10"),
    ("NVIDIA GeForce RTX 4090", "GeForce RTX 4090"), ("Tesla T4", "T4"),
    ("Tesla V100-SXM2-16GB", "V100 SXM2"),
])
def test_peak_table_by_gpu_name(name: str, peak: str) -> None:
    found = peak_for(name)
    assert found is not None and found.name == peak
    assert found.bandwidth_gbs > 0 and found.tflops > 0 and "NVIDIA" in found.source


def test_unknown_gpu_has_no_peak() -> None:
    assert peak_for("Some Future GPU") is None and peak_for(None) is None


def test_parameter_count_matches_the_gguf_reader(tiny_model: Path) -> None:
    from gguf import GGUFReader

    shape = read_shape(tiny_model)
    tensors = GGUFReader(tiny_model).tensors
    assert shape.parameters == sum(int(t.n_elements) for t in tensors)
    embd = next(int(t.n_elements) for t in tensors if t.name == "token_embd.weight")
    assert shape.matmul_parameters == shape.parameters - embd  # the tiny model has output.weight
    assert shape.architecture == "llama" and shape.n_layers == 2


def test_a_damaged_header_is_one_line(tmp_path: Path, tiny_model: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_model.read_bytes()[:200])
    with pytest.raises(BadModel) as err:
        read_shape(cut)
    assert "\n" not in err.value.message


def test_cpu_trial_shares_with_given_peaks(cpu_sweep: dict) -> None:
    rec = min(records_of(default_storage(cpu_sweep["results"]), cpu_sweep["study"]),
              key=lambda r: r.objective)
    none = roofline(rec)
    assert none.bandwidth_share is None and "no peak known" in none.peak_source
    r = roofline(rec, peak_bandwidth_gbs=50, peak_tflops=2)
    m, wl = rec.measurement, rec.workload
    kv = sum(rec.buffers_mib["kv"].values()) * 2**20 / rec.placement["n_ctx"]
    per_token = rec.environment.model_bytes + kv * (wl.prompt_tokens + (wl.gen_tokens - 1) / 2)
    assert r.bandwidth_share == pytest.approx(per_token * m.tg_tps.median / 1e9 / 50)
    params = read_shape(cpu_sweep["model"]).matmul_parameters
    assert r.parameters == params
    assert r.tflops_share == pytest.approx(2 * params * m.pp_tps.median / 1e12 / 2)
    assert any("2 FLOPs per weight" in a for a in r.assumptions)


def test_model_file_gone_or_changed(cpu_sweep: dict, tmp_path: Path, tiny_model: Path) -> None:
    rec = records_of(default_storage(cpu_sweep["results"]), cpu_sweep["study"])[0]
    gone = rec.model_copy(update={"environment": rec.environment.model_copy(
        update={"model_path": str(tmp_path / "moved.gguf")})})
    r = roofline(gone, peak_tflops=1)
    assert r.parameters is None and "is not on this machine" in r.parameters_source
    assert r.tflops_share is None
    given = roofline(gone, peak_tflops=1, model_file=tiny_model)
    assert given.parameters == read_shape(tiny_model).matmul_parameters


def test_h200_winner_roofline(tmp_path: Path) -> None:
    """The real H200 record: weights are the model's CUDA buffers from the load log, KV bytes
    per token of depth are the KV buffer over n_ctx, the peak is the H200 SXM's 4.8 TB/s."""
    h = h200_results(tmp_path)
    rec = next(r for r in records_of(default_storage(h["results"]), h["study"]) if r.number == 22)
    r = roofline(rec)
    assert r.peak_name == "H200 SXM" and r.peak_bandwidth_gbs == 4800
    assert r.weight_bytes == pytest.approx(4403.49 * 2**20)
    assert r.kv_bytes_per_depth_token == pytest.approx(288.0 * 2**20 / 2304)  # 128 KiB
    assert 0.2 < r.bandwidth_share < 0.35
    assert r.parameters is None and r.tflops_share is None  # the model file is not here


def test_mixture_of_experts_counts_the_experts_a_token_uses(tmp_path: Path) -> None:
    """A real CPU sweep of a mixture of experts (tuner/models/archgen.py's qwen3moe: 8
    experts, 4 used per token): decoding reads half the expert weights, and a prompt token
    goes through half the expert parameters, not the whole file."""
    from gguf import GGUFReader

    from tests.cli_run import tuner
    from tests.spaces import write_space
    from tuner.models.archgen import write_qwen3moe
    from tuner.models.memplan import read_layout

    model = write_qwen3moe(tmp_path / "moe.gguf")
    proc = tuner("sweep", "--model", model, "--device", "cpu",
                 "--space", write_space(tmp_path / "space.yaml"), "--prompt-tokens", 32,
                 "--gen-tokens", 4, "--repetitions", 1, "--results", tmp_path / "results",
                 "--out", tmp_path / "configs" / "production.yaml", "--study", "moe",
                 "--finalist-rounds", 0)
    assert proc.returncode == 0, proc.stderr
    rec = next(r for r in records_of(default_storage(tmp_path / "results"), "moe") if r.usable)
    r = roofline(rec, peak_bandwidth_gbs=50, peak_tflops=2)
    layout = read_layout(model)
    assert layout.experts_unused_share == 0.5
    assert r.weight_bytes == pytest.approx(model.stat().st_size - sum(layout.expert_bytes) / 2)
    assert "it uses 4 of 8 per layer" in r.weight_source
    exps = sum(int(t.n_elements) for t in GGUFReader(model).tensors if "_exps." in t.name)
    shape = read_shape(model)
    assert shape.expert_parameters == exps
    assert r.parameters == shape.matmul_parameters - exps // 2
    assert "through the experts a token uses" in r.parameters_source
