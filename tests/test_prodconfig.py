"""The production config: validated by the real llama_cpp.server settings, written atomically
with a backup, and loaded by a real ``python -m llama_cpp.server`` that then answers."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

import tuner
from tests.records_factory import make_record
from tests.server_run import complete, free_port, running_server
from tuner.builds.catalog import _installed_lib_dir
from tuner.deploy import prodconfig
from tuner.deploy.configcheck import check_config
from tuner.deploy.prodconfig import server_config, sidecar_path, write_production
from tuner.errors import BadInput, TunerError
from tuner.specs import Workload


@pytest.fixture
def model(smollm2_path: Path) -> str:
    """The real SmolLM2 GGUF (tests/conftest.py): configs point at a file the server can load."""
    return str(smollm2_path)


def cpu_record(model_path: str):
    """The settings the server test runs: SmolLM2 on the CPU with a q8_0 cache."""
    return make_record(
        7, device="cpu", n_gpu_layers=0, n_batch=256, n_ubatch=128, flash_attn=True,
        type_k="q8_0", type_v="q8_0", n_threads=2, model_path=model_path,
        workload=Workload(prompt_tokens=256, gen_tokens=64, n_ctx=512),
    )


def write(record, out: Path, model: str, **kw):
    kw.setdefault("env", {})
    kw.setdefault("build_lib_dir", None)
    return write_production(record, out, model_path=model, results_dir=out.parent / "results",
                            **kw)


def test_server_config_maps_the_record(model: str) -> None:
    config = server_config(make_record(1, n_batch=1024, n_ubatch=256, flash_attn=True,
                                       type_k="q8_0", type_v="q4_0"), model, port=8123)
    entry = config["models"][0]
    assert config["host"] == "127.0.0.1" and config["port"] == 8123
    assert entry["model"] == os.path.abspath(model)
    assert entry["model_alias"] == "SmolLM2-135M-Instruct.Q4_1"
    assert (entry["n_batch"], entry["n_ubatch"], entry["n_ctx"]) == (1024, 256, 512)
    assert entry["flash_attn"] is True and entry["offload_kqv"] is True
    assert (entry["type_k"], entry["type_v"]) == (8, 2)
    assert entry["n_gpu_layers"] == -1
    # Unset threads: the worker used every core of the machine it ran on, so does the server.
    cores = make_record(1).environment.cpu_count
    assert (entry["n_threads"], entry["n_threads_batch"]) == (cores, cores)
    assert entry["logits_all"] is False  # measured with last-token logits only
    threaded = server_config(make_record(2, device="cpu", n_threads=6), model)["models"][0]
    assert (threaded["n_threads"], threaded["n_threads_batch"]) == (6, 6)
    assert threaded["n_gpu_layers"] == 0
    # A measurement that recorded its threads (the worker's default: physical cores) wins.
    rec = make_record(3)
    rec = rec.model_copy(update={"measurement": rec.measurement.model_copy(update={"threads": 5})})
    assert server_config(rec, model)["models"][0]["n_threads"] == 5


def test_written_yaml_validates_with_the_servers_settings(tmp_path: Path, model: str) -> None:
    from llama_cpp.server.settings import ConfigFileSettings

    written = write(make_record(3, flash_attn=True, type_k="q8_0", type_v="q8_0"),
                    tmp_path / "configs" / "production.yaml", model)
    assert written.path.is_file() and written.backup is None
    text = written.path.read_text()
    # Exactly how llama_cpp.server.__main__ reads a .yaml config file.
    settings = ConfigFileSettings.model_validate_json(json.dumps(yaml.safe_load(text)))
    m = settings.models[0]
    assert (m.model, m.n_gpu_layers, m.type_k, m.type_v, m.flash_attn) == (
        os.path.abspath(model), -1, 8, 8, True)


def test_validate_rejects_unknown_and_invalid_keys(model: str) -> None:
    config = server_config(make_record(4), model)
    check_config(config)
    with pytest.raises(TunerError, match="does not accept: gpu_layers"):
        check_config({**config, "models": [{**config["models"][0], "gpu_layers": 3}]})
    with pytest.raises(TunerError, match="does not accept: tuner"):
        check_config({**config, "tuner": {"build": "x"}})
    with pytest.raises(TunerError, match=r"models\.0\.n_batch") as err:
        check_config({**config, "models": [{**config["models"][0], "n_batch": 0}]})
    assert "\n" not in str(err.value)
    with pytest.raises(TunerError, match="at least one model"):
        check_config({"host": "127.0.0.1", "models": []})


def test_one_checking_child_serves_an_environment_until_a_check_fails(model: str,
                                                                     tmp_path: Path) -> None:
    """A sweep checks its first config before the trials and the winner's after them in one
    child per environment; a refused config ends that child (the next check gets a fresh one);
    a build library that does not load is the environment's fault (exit 3), not tuner's."""
    from tuner.deploy import configcheck
    from tuner.errors import EnvironmentUnfit

    configcheck.close_children()
    config = server_config(make_record(4), model)
    env = {"CUDA_VISIBLE_DEVICES": ""}
    first = check_config(config, env=env)
    assert len(configcheck._CHILDREN) == 1
    pid = next(iter(configcheck._CHILDREN.values())).proc.pid
    assert check_config(config, env=env) == first
    assert [c.proc.pid for c in configcheck._CHILDREN.values()] == [pid]  # the same child
    check_config(config, env={"N_CTX": "64"})  # another environment, another child
    assert len(configcheck._CHILDREN) == 2
    with pytest.raises(TunerError, match="does not accept: tuner"):
        check_config({**config, "tuner": {}}, env=env)
    assert pid not in [c.proc.pid for c in configcheck._CHILDREN.values()]
    assert check_config(config, env=env) == first  # a fresh child answers
    (tmp_path / "libllama.so").write_bytes(b"not a library")
    with pytest.raises(EnvironmentUnfit, match="could not load its library"):
        check_config(config, str(tmp_path), env=env)
    configcheck.close_children()
    assert not configcheck._CHILDREN


def test_rewrite_keeps_the_previous_file_as_bak(tmp_path: Path, model: str) -> None:
    out = tmp_path / "production.yaml"
    first = write(make_record(1, n_batch=512), out, model)
    old_text = out.read_text()
    old_side = first.sidecar.read_text()
    second = write(make_record(2, n_batch=2048, n_ubatch=1024), out, model)
    assert second.backup == tmp_path / "production.yaml.bak"
    assert second.backup.read_text() == old_text
    assert yaml.safe_load(out.read_text())["models"][0]["n_batch"] == 2048
    assert yaml.safe_load(second.backup.read_text())["models"][0]["n_batch"] == 512
    assert Path(str(second.sidecar) + ".bak").read_text() == old_side
    assert json.loads(second.sidecar.read_text())["provenance"]["number"] == 2
    # No temp files left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "production.env", "production.env.bak", "production.tuner.json",
        "production.tuner.json.bak", "production.yaml", "production.yaml.bak"]


def test_failing_serializer_leaves_the_existing_file_untouched(
        tmp_path: Path, model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "production.yaml"
    write(make_record(1), out, model)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken(config: dict) -> str:
        raise RuntimeError("serializer broke")

    monkeypatch.setattr(prodconfig, "_render_yaml", broken)
    with pytest.raises(RuntimeError, match="serializer broke"):
        write(make_record(2, n_batch=2048), out, model)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_failing_rename_leaves_the_existing_file_untouched(
        tmp_path: Path, model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "production.yaml"
    side = write(make_record(1), out, model).sidecar
    old_text, old_side = out.read_text(), side.read_text()

    def no_rename(src: str, dst: object) -> None:
        if Path(str(dst)) == out:
            raise OSError(28, "No space left on device")
        os.rename(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(prodconfig.os, "replace", no_rename)
    with pytest.raises(BadInput, match="No space left on device"):
        write(make_record(2, n_batch=2048), out, model)
    # The sidecar, renamed just before, is put back too: the pair stays consistent.
    assert (out.read_text(), side.read_text()) == (old_text, old_side)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_bad_output_paths_are_bad_input(tmp_path: Path, model: str) -> None:
    folder = tmp_path / "production.yaml"
    folder.mkdir()
    with pytest.raises(BadInput, match="is a directory"):
        write(make_record(1), folder, model)
    assert list(folder.iterdir()) == []
    blocker = tmp_path / "afile"
    blocker.write_text("keep me")
    with pytest.raises(BadInput, match="is not a directory"):
        write(make_record(1), blocker / "sub" / "production.yaml", model)
    assert blocker.read_text() == "keep me"
    with pytest.raises(BadInput, match=r"\.yaml or \.yml"):
        write(make_record(1), tmp_path / "production.json", model)


def test_sidecar_holds_build_env_provenance_and_figures(tmp_path: Path, model: str) -> None:
    record = make_record(5, build="cuda-fa-all", cuda_graphs=False, request_s=2.5)
    out = tmp_path / "configs" / "production.yaml"
    # The config is validated by the server's settings loaded from this build's library: the
    # installed package's real (CPU) library stands in for a kernel build here.
    lib = str(_installed_lib_dir())
    written = write(record, out, model, build_lib_dir=lib, env={"LLAMA_CPP_LIB_PATH": lib})
    assert written.sidecar == tmp_path / "configs" / "production.tuner.json"
    assert sidecar_path(out) == written.sidecar
    side = json.loads(written.sidecar.read_text())
    assert (side["build"]["name"], side["build"]["lib_dir"]) == ("cuda-fa-all", lib)
    # No build.json beside this library: recreating it is reinstalling the same version.
    assert side["build"]["rebuild"].endswith("'llama-cpp-python[server]==0.3.36'")
    assert side["env"] == {"GGML_CUDA_DISABLE_GRAPHS": "1", "LLAMA_CPP_LIB_PATH": lib}
    assert side["launch"] == (
        f"GGML_CUDA_DISABLE_GRAPHS=1 LLAMA_CPP_LIB_PATH={lib} "
        f"python -m llama_cpp.server --config_file {out}")
    prov = side["provenance"]
    assert (prov["study"], prov["trial_id"], prov["number"], prov["spec_key"]) == (
        "test-study", "test-0005", 5, record.spec_key)
    assert prov["tuner_version"] == tuner.__version__
    assert prov["results_dir"] == str(tmp_path / "configs" / "results")
    assert prov["created"].endswith("+00:00")
    figures = side["figures"]
    assert figures["request_s"]["median"] == pytest.approx(2.5)
    m = record.measurement
    assert figures["pp_tps"] == {"median": m.pp_tps.median, "min": m.pp_tps.min,
                                 "max": m.pp_tps.max}
    assert figures["tg_tps"]["median"] == pytest.approx(m.tg_tps.median)
    assert (figures["gpu_peak_mib"], figures["load_s"]) == (1200.0, 0.8)
    assert side["workload"]["n_ctx"] == 512
    assert side["verification"]["verified"] is True
    assert side["environment"]["gpus"][0]["name"].startswith("NVIDIA H100")


def test_real_server_loads_the_config_and_answers(tmp_path: Path, model: str) -> None:
    port = free_port()
    written = write(cpu_record(model), tmp_path / "production.yaml", model, port=port)
    log_path = tmp_path / "server.log"
    with running_server(written.path, log_path, port) as (base, models):
        assert [m["id"] for m in models["data"]] == ["SmolLM2-135M-Instruct.Q4_1"]
        text = complete(base)
        assert text.strip(), "empty completion"
    # The server ran the trial's settings, as its llama.cpp log reports them.
    log = log_path.read_text(errors="replace")
    for setting, value in (("n_ctx", "512"), ("n_batch", "256"), ("n_ubatch", "128"),
                           ("flash_attn", "enabled")):
        assert re.search(rf"llama_context: {setting}\s+= {value}\n", log), (setting, log[-3000:])
    assert re.search(r"K \(q8_0\).*V \(q8_0\)", log), log[-3000:]
