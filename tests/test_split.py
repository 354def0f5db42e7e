"""Multi-GPU placement (split_mode, tensor_split, main_gpu): the space, the worker's real
llama_model_params, a real CPU sweep that carries the settings (a CPU build ignores them), the
server config validated by llama_cpp.server's own settings, and the split verification on
two-device logs.

TEST DATA: the two-device logs here are EDITED COPIES of a real one-GPU llama.cpp load log
(tests/fixtures/cuda-h100-full-offload.log, an H100 run of a 32-layer model): layers and their KV
cache reassigned to CUDA1, a second ``using device`` line, and the CUDA0 buffers split in two,
the way llama.cpp prints them (src/llama.cpp, src/llama-model.cpp, src/llama-kv-cache.cpp of
the vendored release). No two-GPU log of a real run is in the repository yet."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import yaml

from tests.cli_run import tuner
from tests.records_factory import make_record
from tuner import settings
from tuner.deploy.configcheck import check_config
from tuner.deploy.prodconfig import server_config
from tuner.errors import BadInput
from tuner.evidence.gpusplit import expected_layers
from tuner.evidence.placement import Expectation, expect, parse_load_log, verify
from tuner.results.studystore import default_storage, require_study
from tuner.search.space import Space, default_space, grid, load_space
from tuner.specs import ContextSettings, ModelSettings, TrialSpec, Workload

FIXTURES = Path(__file__).parent / "fixtures"
CUDA_LOG = (FIXTURES / "cuda-h100-full-offload.log").read_text()
WL = Workload(prompt_tokens=32, gen_tokens=4, repetitions=1, warmup=0)
SPLIT_SPACE = ("split_modes: [none, layer, row]\n"
               "tensor_splits: [null, [1, 1], [3, 1]]\n")


# -- edited copies of the real log --------------------------------------------------------------

def two_gpu_log(cuda1_layers: range, *, kv_follows: bool = True,
                cpu_layers: range = range(0)) -> str:
    """The real H100 log, edited: a second GPU in the device lists, ``cuda1_layers`` (and, with
    ``kv_follows``, their KV cache) on CUDA1, ``cpu_layers`` (and their KV cache) on the CPU, buffers per device."""
    text = CUDA_LOG.replace(
        "ggml_cuda_init: found 1 CUDA devices (Total VRAM: 81079 MiB):\n"
        "  Device 0: NVIDIA H100 80GB HBM3, compute capability 9.0, VMM: yes, VRAM: 81079 MiB\n",
        "ggml_cuda_init: found 2 CUDA devices (Total VRAM: 162158 MiB):\n"
        "  Device 0: NVIDIA H100 80GB HBM3, compute capability 9.0, VMM: yes, VRAM: 81079 MiB\n"
        "  Device 1: NVIDIA H100 80GB HBM3, compute capability 9.0, VMM: yes, VRAM: 81079 MiB\n")
    using0 = ("llama_prepare_model_devices: using device CUDA0 (NVIDIA H100 80GB HBM3) "
              "(0000:00:06.0) - 80552 MiB free\n")
    assert using0 in text
    text = text.replace(using0, using0 + using0.replace("CUDA0", "CUDA1").replace(
        "0000:00:06.0", "0000:00:07.0"))
    for i in cuda1_layers:
        text = text.replace(f"layer {i:3d} assigned to device CUDA0",
                            f"layer {i:3d} assigned to device CUDA1")
        if kv_follows:
            text = text.replace(f"llama_kv_cache: layer {i:3d}: dev = CUDA0",
                                f"llama_kv_cache: layer {i:3d}: dev = CUDA1")
    for i in cpu_layers:
        text = text.replace(f"layer {i:3d} assigned to device CUDA0",
                            f"layer {i:3d} assigned to device CPU")
        text = text.replace(f"llama_kv_cache: layer {i:3d}: dev = CUDA0",
                            f"llama_kv_cache: layer {i:3d}: dev = CPU")
    if len(cuda1_layers):
        text = text.replace(
            "load_tensors:        CUDA0 model buffer size =  3577.56 MiB\n",
            "load_tensors:        CUDA0 model buffer size =  1788.78 MiB\n"
            "load_tensors:        CUDA1 model buffer size =  1788.78 MiB\n")
        text = text.replace(
            "llama_kv_cache:      CUDA0 KV buffer size =  2048.00 MiB\n",
            "llama_kv_cache:      CUDA0 KV buffer size =  1024.00 MiB\n"
            "llama_kv_cache:      CUDA1 KV buffer size =  1024.00 MiB\n")
    return text


SPLIT_LOG = two_gpu_log(range(17, 33))  # 17 layers on CUDA0, 16 (with the output) on CUDA1
ALL_ON_CUDA0 = two_gpu_log(range(0))    # two GPUs used, every layer on the first


def test_space_file_sweeps_split_modes_and_tensor_splits(tmp_path: Path) -> None:
    p = tmp_path / "space.yaml"
    p.write_text("n_batch: [512]\nn_ubatch: [512]\n" + SPLIT_SPACE)
    specs = grid(load_space(p), "cuda", WL, lambda *a: True)
    # Split mode none keeps the model on one GPU: a tensor split changes nothing there.
    assert [(s.model.split_mode, s.model.tensor_split) for s in specs] == [(0, None)] + [
        (m, t) for m in (1, 2) for t in (None, (1.0, 1.0), (3.0, 1.0))]
    assert len({s.model.worker_key() for s in specs}) == 7  # one model load each
    labels = [s.label() for s in specs]
    assert labels[0] == "installed b512/u512 nofa kv f16/f16 ngl -1 split none gpu0"
    assert labels[1] == "installed b512/u512 nofa kv f16/f16 ngl -1"  # layer: the default
    assert labels[3] == "installed b512/u512 nofa kv f16/f16 ngl -1 ts 3:1"
    assert labels[5] == "installed b512/u512 nofa kv f16/f16 ngl -1 split row ts 1:1"
    # The defaults keep the key and space id of settings stored before these were searchable.
    before = Space(n_batch=[512], n_ubatch=[512])
    assert grid(before, "cuda", WL, lambda *a: True)[0].key() == specs[1].key()
    p.write_text("n_batch: [512]\nn_ubatch: [512]\nsplit_modes: [layer]\ntensor_splits: [null]\n")
    assert load_space(p).space_id() == before.space_id()
    # The built-in spaces do not split.
    for device in ("cpu", "cuda"):
        assert default_space(device, ["installed"]).split_modes == ["layer"]
        assert default_space(device, ["installed"]).tensor_splits == [None]


@pytest.mark.parametrize(("text", "message"), [
    ("split_modes: [tensor]", "split_modes: Value error, unknown split mode 'tensor' "
                              "(known: none, layer, row)"),
    ("tensor_splits: [[0, 0]]", "tensor split [0.0, 0.0] must hold proportions >= 0"),
    ("tensor_splits: [[-1, 2]]", "tensor split [-1.0, 2.0] must hold proportions >= 0"),
    ("tensor_splits: [[]]", "a tensor split lists 1 to 16 proportions"),
    ("tensor_splits: [[a, b]]", "tensor_splits.0.0: Input should be a valid number"),
])
def test_bad_split_values_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "space.yaml"
    p.write_text(text + "\n")
    with pytest.raises(BadInput) as e:
        load_space(p)
    assert message in e.value.message and "\n" not in e.value.message


def test_worker_model_params_hold_the_split() -> None:
    """The real llama_model_params: split_mode and main_gpu as numbers, tensor_split a float
    array of llama_max_devices() entries (zero-padded) that outlives the call."""
    import llama_cpp

    ms = ModelSettings(split_mode=2, main_gpu=1, tensor_split=(3.0, 1.0))
    params = llama_cpp.llama_model_default_params()
    settings.apply_model(llama_cpp, params, ms)
    gc.collect()
    assert (params.split_mode, params.main_gpu) == (2, 1)
    n = max(llama_cpp.llama_max_devices(), 2)
    assert [params.tensor_split[i] for i in range(n)] == [3.0, 1.0] + [0.0] * (n - 2)
    default = llama_cpp.llama_model_default_params()
    settings.apply_model(llama_cpp, default, ModelSettings())
    assert not default.tensor_split and default.split_mode == llama_cpp.LLAMA_SPLIT_MODE_LAYER


def test_cpu_sweep_runs_and_records_the_split(tmp_path: Path, tiny_model: Path) -> None:
    """On the CPU build llama.cpp has no GPU to split over: the trial still runs, verified, and
    its record holds the split it was asked for."""
    space = tmp_path / "space.yaml"
    space.write_text("n_batch: [32]\nn_ubatch: [32]\nn_threads: [1]\n"
                     "split_modes: [layer]\ntensor_splits: [[1, 1]]\n")
    results = tmp_path / "results"
    proc = tuner("sweep", "--model", tiny_model, "--device", "cpu", "--space", space,
                 "--prompt-tokens", 16, "--gen-tokens", 2, "--n-ctx", 32, "--repetitions", 1,
                 "--warmup", 0, "--results", results, "--out", tmp_path / "p.yaml",
                 "--finalist-rounds", 0, "--served-requests", 0, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = require_study(default_storage(results)).records()
    assert record.state.value == "complete" and record.verification.verified, \
        record.verification.reasons
    assert (record.spec.model.split_mode, record.spec.model.tensor_split) == (1, (1.0, 1.0))
    assert record.spec.key() == record.spec_key  # read back from storage, the same key
    assert "ts 1:1" in record.spec.label()
    config = yaml.safe_load((tmp_path / "p.yaml").read_text())["models"][0]
    assert (config["split_mode"], config["tensor_split"], config["main_gpu"]) == (1, [1.0, 1.0], 0)


def test_server_config_carries_the_split_and_the_server_accepts_it(
        smollm2_path: Path) -> None:
    rec = make_record(1)
    spec = rec.spec.model_copy(update={"model": ModelSettings(split_mode=2, main_gpu=1,
                                                              tensor_split=(3.0, 1.0))})
    rec = rec.model_copy(update={"spec": spec, "spec_key": spec.key()})
    config = server_config(rec, str(smollm2_path))
    entry = config["models"][0]
    assert (entry["split_mode"], entry["main_gpu"], entry["tensor_split"]) == (2, 1, [3.0, 1.0])
    loaded = check_config(config)  # as llama_cpp.server's ConfigFileSettings loads it
    assert (loaded["split_mode"], loaded["main_gpu"], loaded["tensor_split"]) == (2, 1,
                                                                                  [3.0, 1.0])
    plain = server_config(make_record(2), str(smollm2_path))["models"][0]
    assert (plain["split_mode"], plain["main_gpu"], plain["tensor_split"]) == (1, 0, None)


# -- verification on two devices ------------------------------------------------------------

def _split(**kw: object) -> Expectation:
    return Expectation(device="cuda", **kw)  # type: ignore[arg-type]


def test_two_device_evidence_per_gpu() -> None:
    ev = parse_load_log(SPLIT_LOG)
    assert ev.model_devices == ["CUDA0", "CUDA1"]
    assert len(ev.cuda_devices) == 2
    held = {d: (h.layers, h.kv_layers, h.model_mib, h.kv_mib) for d, h in ev.per_gpu.items()}
    assert held == {"CUDA0": (17, 17, 1788.78, 1024.0), "CUDA1": (16, 15, 1788.78, 1024.0)}
    assert ev.per_gpu["CUDA0"].compute_mib == 92.51


def test_split_across_two_gpus_is_verified_with_what_each_holds() -> None:
    v = verify(parse_load_log(SPLIT_LOG), _split(split_mode=1))
    assert v.verified, v.reasons
    assert v.summary == ("layers: CUDA0 17, CUDA1 16; KV: CUDA0 17, CUDA1 15; "
                         "MiB model/KV/compute: CUDA0 1788.8/1024.0/92.5, "
                         "CUDA1 1788.8/1024.0/0.0; build default")
    assert verify(parse_load_log(SPLIT_LOG), _split(split_mode=2)).verified


def test_split_asked_but_all_on_one_gpu_is_not_verified() -> None:
    v = verify(parse_load_log(ALL_ON_CUDA0), _split(split_mode=1))
    assert not v.verified
    assert v.reasons == ["split_mode layer across 2 GPUs (CUDA0, CUDA1), but every layer is "
                         "on CUDA0"]
    # One GPU in the machine: nothing to split over, every layer on it is right.
    assert verify(parse_load_log(CUDA_LOG), _split(split_mode=1)).verified


def test_a_layer_on_the_cpu_is_not_verified() -> None:
    v = verify(parse_load_log(two_gpu_log(range(17, 33), cpu_layers=range(3, 4))),
               _split(split_mode=1))
    assert not v.verified
    assert v.reasons == ["1 of 33 layers on CPU (layer 3), not on the GPU",
                         "KV cache of 1 of 32 layers on CPU (layer 3), not on the GPU"]


def test_kv_cache_away_from_its_layer_is_not_verified() -> None:
    v = verify(parse_load_log(two_gpu_log(range(17, 33), kv_follows=False)),
               _split(split_mode=1))
    assert v.reasons == ["KV cache of 15 layers on CUDA0 (layers 17-31), away from their "
                         "layer's device"]


def test_split_mode_none_needs_every_layer_on_main_gpu() -> None:
    assert verify(parse_load_log(CUDA_LOG), _split(split_mode=0, main_gpu=0)).verified
    v = verify(parse_load_log(SPLIT_LOG), _split(split_mode=0, main_gpu=0))
    assert v.reasons[0] == "split_mode none: CUDA1 16 layers away from main_gpu CUDA0"
    assert "split_mode none: KV cache on CUDA1, expected only on CUDA0" in v.reasons
    on1 = two_gpu_log(range(33))
    assert verify(parse_load_log(on1), _split(split_mode=0, main_gpu=1)).verified
    assert not verify(parse_load_log(on1), _split(split_mode=0, main_gpu=0)).verified


def test_tensor_split_layer_counts_are_llama_cpps() -> None:
    """load_tensors' split points: layer i of n goes to the first GPU whose cumulative share
    exceeds i/n. 33 layers at 1:1 -> 17/16 (layer 16.5 rounds to CUDA0's side), at 3:1 ->
    25/8."""
    gpus = ["CUDA0", "CUDA1"]
    assert expected_layers((1.0, 1.0), gpus, 33) == {"CUDA0": 17, "CUDA1": 16}
    assert expected_layers((3.0, 1.0), gpus, 33) == {"CUDA0": 25, "CUDA1": 8}
    assert expected_layers((1.0, 0.0), gpus, 33) == {"CUDA0": 33}
    ev = parse_load_log(SPLIT_LOG)
    assert verify(ev, _split(split_mode=1, tensor_split=(1.0, 1.0))).verified
    v = verify(ev, _split(split_mode=1, tensor_split=(3.0, 1.0)))
    assert v.reasons == ["tensor_split 3:1 puts CUDA0 25, CUDA1 8 layers, the log shows "
                         "CUDA0 17, CUDA1 16"]
    assert verify(parse_load_log(two_gpu_log(range(25, 33))),
                  _split(split_mode=1, tensor_split=(3.0, 1.0))).verified
    # A split naming more GPUs than llama.cpp used.
    v = verify(parse_load_log(CUDA_LOG), _split(split_mode=1, tensor_split=(1.0, 1.0)))
    assert v.reasons == ["tensor_split 1:1 names 2 GPUs, llama.cpp used 1 (CUDA0)"]


def test_trial_expectation_carries_the_split() -> None:
    spec = TrialSpec(model=ModelSettings(split_mode=0, main_gpu=1, tensor_split=(3.0, 1.0)),
                     context=ContextSettings())
    ex = expect(spec)
    assert (ex.split_mode, ex.main_gpu, ex.tensor_split) == (0, 1, (3.0, 1.0))
    plain = expect(TrialSpec(model=ModelSettings(), context=ContextSettings()))
    assert (plain.split_mode, plain.main_gpu, plain.tensor_split) == (1, 0, None)


def test_split_preset_loads() -> None:
    preset = load_space(Path(__file__).resolve().parent.parent / "configs" / "spaces"
                        / "cuda-split.yaml")
    assert preset.split_modes == ["none", "layer", "row"]
    assert preset.tensor_splits == [None, [1.0, 1.0], [3.0, 1.0]]
    specs = grid(preset, "cuda", Workload(prompt_tokens=512, gen_tokens=128), lambda *a: True)
    assert {(s.model.split_mode, s.model.tensor_split) for s in specs} == {
        (0, None), *((m, t) for m in (1, 2) for t in (None, (1.0, 1.0), (3.0, 1.0)))}


def test_a_refused_load_says_why_in_llama_cpps_words() -> None:
    """The real load log of a row split on two H200s (docs/benchmarks.md, run 8): the record's
    reason carries llama.cpp's own line, not only that the load failed."""
    from tuner.worker.main import load_error

    log = (Path(__file__).resolve().parent / "fixtures" / "h200x2-row-split-load.log").read_text()
    assert load_error(log) == ("llama.cpp could not load the model: device CUDA0 does not "
                               "support split buffers")
    assert load_error("no such line") == "llama.cpp could not load the model"
