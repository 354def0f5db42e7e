"""op_offload, a context-level setting added through its one declaration in tuner/settings.py:
the space, the worker's llama_context_params, the record, the report column, the server config
and the verification, on the real llama-cpp-python and the real SmolLM2-135M."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml

from tests.cli_run import one_line_error, tuner
from tests.records_factory import make_record
from tuner.errors import BadInput
from tuner.evidence.effective import trial_settings
from tuner.reports.rows import rows
from tuner.results.studystore import default_storage, require_study
from tuner.search.space import Space, default_space, grid, load_space
from tuner.specs import ContextSettings, ModelSettings, TrialSpec, Workload
from tuner.worker.bench import context_params
from tuner.worker.opproof import proof_key

WL = Workload(prompt_tokens=32, gen_tokens=4, repetitions=1, warmup=0)


def _off(record):
    spec = record.spec.model_copy(
        update={"context": record.spec.context.model_copy(update={"op_offload": False})})
    return record.model_copy(update={"spec": spec, "spec_key": spec.key()})


def test_default_is_llama_cpps_and_the_builtin_spaces_do_not_sweep_it() -> None:
    import llama_cpp

    assert ContextSettings().op_offload is llama_cpp.llama_context_default_params().op_offload
    for device in ("cpu", "cuda"):
        space = default_space(device, ["installed"])
        assert space.op_offload == [True]
        assert all(s.context.op_offload for s in grid(space, device, WL, lambda *a: True))


def test_a_space_file_sweeps_it(tmp_path: Path) -> None:
    p = tmp_path / "space.yaml"
    p.write_text("n_batch: [64]\nn_ubatch: [64]\nop_offload: [true, false]\n")
    space = load_space(p)
    specs = grid(space, "cpu", WL, lambda *a: True)
    assert [s.context.op_offload for s in specs] == [True, False]
    assert [s.label() for s in specs] == ["installed b64/u64 nofa kv f16/f16 t-auto",
                                          "installed b64/u64 nofa kv f16/f16 t-auto "
                                          "no-op-offload"]
    # On (the default) keeps the key and space id of settings stored before it existed.
    assert specs[0].key() != specs[1].key()
    before = Space(n_batch=[64], n_ubatch=[64])
    assert grid(before, "cpu", WL, lambda *a: True)[0].key() == specs[0].key()
    assert before.space_id() == load_space(_write(tmp_path, "n_batch: [64]\nn_ubatch: [64]\n"
                                                  "op_offload: [true]\n")).space_id()
    p.write_text("op_offload: [sometimes]\n")
    with pytest.raises(BadInput, match="op_offload.0: Input should be a valid boolean"):
        load_space(p)


def _write(tmp: Path, text: str) -> Path:
    p = tmp / "other.yaml"
    p.write_text(text)
    return p


def test_worker_context_params_and_op_proof_key_carry_it() -> None:
    import llama_cpp

    on, off = ContextSettings(), ContextSettings(op_offload=False)
    assert context_params(llama_cpp, on, 256, 2).op_offload is True
    assert context_params(llama_cpp, off, 256, 2).op_offload is False
    assert proof_key(on, 256) != proof_key(off, 256)


def test_report_column_only_when_some_trial_is_off() -> None:
    records = [make_record(0, request_s=1.0), make_record(1, request_s=0.9)]
    assert "op_offload" not in rows(records)[0]
    out = {r["trial"]: r for r in rows([records[0], _off(records[1])])}
    assert out[0]["op_offload"] == "on" and out[1]["op_offload"] == "off"
    # Faster, verified, but the server cannot run it: not ranked, and the report says why.
    assert out[0]["rank"] == 1 and out[1]["rank"] is None
    assert out[1]["why"].startswith("llama_cpp.server cannot run op_offload=False")


def test_server_config_refuses_what_the_server_cannot_run() -> None:
    rec = make_record(0)
    assert "op_offload" not in trial_settings(rec.spec, rec.workload, 4)
    off = _off(rec)
    assert not off.usable
    with pytest.raises(BadInput, match="llama_cpp.server cannot run op_offload=False"):
        trial_settings(off.spec, off.workload, 4)


def test_old_records_and_sidecars_load_with_it_on() -> None:
    old = {"model": {"build": "installed", "device": "cpu", "n_gpu_layers": 0},
           "context": {"n_batch": 64, "n_ubatch": 64, "flash_attn": False, "type_k": "f16",
                       "type_v": "f16", "n_threads": None}}
    spec = TrialSpec.model_validate(old)
    assert spec.context.op_offload is True
    assert spec.key() == TrialSpec(model=ModelSettings(build="installed", device="cpu"),
                                   context=ContextSettings(n_batch=64, n_ubatch=64)).key()


def test_cpu_sweep_end_to_end(tmp_path: Path, tiny_model: Path) -> None:
    """A real sweep of op_offload on/off: records, report column, server config and its
    sidecar, and each record verified (n_ctx / n_batch / n_ubatch proven by the log). The tiny
    model: this is about the setting's path through the tuner (SmolLM2 doubled its CPU time)."""
    space = tmp_path / "space.yaml"
    space.write_text("n_batch: [64]\nn_ubatch: [32]\nn_threads: [1]\nop_offload: [true, false]\n")
    out = tmp_path / "configs" / "production.yaml"
    results = tmp_path / "results"
    proc = tuner("sweep", "--model", tiny_model, "--device", "cpu", "--space", space,
                 "--prompt-tokens", 48, "--gen-tokens", 4, "--n-ctx", 80, "--repetitions", 1,
                 "--warmup", 0, "--results", results, "--out", out, "--finalist-rounds", 0,
                 "--served-requests", 0, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    records = require_study(default_storage(results)).records()  # by trial number
    assert [r.spec.context.op_offload for r in records] == [True, False]
    for r in records:
        assert r.state.value == "complete" and r.verification.verified, r.verification.reasons
        assert (r.placement["n_ctx"], r.placement["n_batch"], r.placement["n_ubatch"]) == (
            256, 64, 32)  # 80 rounded up to llama.cpp's 256; as asked otherwise
    on, off = records
    assert on.usable and not off.usable

    report = tuner("report", "--results", results, "--format", "csv")
    assert report.returncode == 0, report.stderr
    table = {int(r["trial"]): r for r in csv.DictReader(io.StringIO(report.stdout))}
    assert table[on.number]["op_offload"] == "on" and table[off.number]["op_offload"] == "off"
    assert table[off.number]["why"].startswith("llama_cpp.server cannot run op_offload=False")

    config = yaml.safe_load(out.read_text())["models"][0]
    assert "op_offload" not in config  # the server runs llama.cpp's default: on
    assert (config["n_batch"], config["n_ubatch"], config["n_ctx"]) == (64, 32, 80)
    sidecar = json.loads(out.with_name("production.tuner.json").read_text())
    assert sidecar["spec"]["context"]["op_offload"] is True
    assert sidecar["provenance"]["spec_key"] == on.spec_key
    assert sidecar["verification"]["verified"] is True


def test_a_bad_value_in_a_space_file_is_one_line(tmp_path: Path, smollm2_path: Path) -> None:
    p = tmp_path / "space.yaml"
    p.write_text("op_offload: [maybe]\n")
    proc = tuner("sweep", "--model", smollm2_path, "--device", "cpu", "--space", p,
                 "--results", tmp_path / "r", "--out", tmp_path / "p.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "op_offload.0: Input should be a valid boolean" in one_line_error(proc)
