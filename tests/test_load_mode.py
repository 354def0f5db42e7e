"""How a model's weights are read (the setting ``use_mmap``): mapped from the file, llama.cpp's
load mode mmap, or read into the backend's host buffers, load mode none (on a CUDA build pinned
memory, which op offload uploads a prompt's host weights from at 2.5x the speed: run 33 of
docs/benchmarks.md). Shown here on the CPU build: a real sweep measured with it off, its
config served by the real llama_cpp.server (``use_mmap: false``) and llama-server (``-lm
none``), each load proven from its own log and ``tuner verify`` of both; the proof of real
load logs and an edited one refused; the partial-offload space searching it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.cli_run import one_setting_served_sweep, tuner
from tests.test_llamaserver import BUILDS, LOOSE
from tests.worker_load import worker_load_log
from tuner.deploy.llamaserver import server_args
from tuner.evidence.placement import Expectation, load_mode_reasons, parse_load_log, verify
from tuner.search.space import default_space
from tuner.specs import ContextSettings, ModelSettings, TrialSpec, Workload


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> tuple[Path, str]:
    """A real one-setting CPU sweep with the model read into host buffers, served through
    llama_cpp.server and llama-server, both deployments written."""
    return one_setting_served_sweep(tiny_model, tmp_path_factory.mktemp("nommap"), BUILDS,
                                    use_mmap=[False])


def test_the_sweep_measures_proves_and_deploys_the_load_mode(swept: tuple[Path, str]) -> None:
    out, text = swept
    assert "no-mmap" in text and "not verified" not in text, text[-3000:]
    assert ", load mode none, build" in text  # the trial's proof names it
    config = yaml.safe_load(out.read_text())
    assert config["models"][0]["use_mmap"] is False
    args = out.with_name("production.llama-server.args").read_text().splitlines()
    assert args[args.index("-lm") + 1] == "none"
    assert "llama-server deployment: " in text, text[-3000:]


def test_verify_proves_both_services_read_the_weights_as_measured(
        swept: tuple[Path, str]) -> None:
    out, _ = swept
    for target in ("production.yaml", "production.llama-server.args"):
        proc = tuner("verify", out.with_name(target), "--tolerance", LOOSE, "--requests", 2,
                     cwd=out.parent)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert ", load mode none, build" in proc.stdout, proc.stdout


def test_a_real_load_shows_its_load_mode_and_an_edit_is_refused(tiny_model: Path,
                                                                tmp_path: Path) -> None:
    unmapped = parse_load_log(worker_load_log(tiny_model, tmp_path, device="cpu", use_mmap=False))
    mapped = parse_load_log(worker_load_log(tiny_model, tmp_path, device="cpu"))
    assert (unmapped.load_mode, mapped.load_mode) == ("none", "mmap")
    # Read into a host buffer, not mapped from the file
    assert "CPU_Mapped" in mapped.model_buffers_mib
    assert "CPU_Mapped" not in unmapped.model_buffers_mib
    assert load_mode_reasons(unmapped, "none") == [] == load_mode_reasons(mapped, "mmap")
    assert load_mode_reasons(mapped, "none") == ["load mode mmap in the log, expected none"]
    v = verify(unmapped, Expectation(device="cpu", load_mode="mmap"))
    assert v.reasons == ["load mode none in the log, expected mmap"]
    # A log that does not name it (a release before the load modes) proves only the default
    older = unmapped.model_copy(update={"load_mode": None})
    assert load_mode_reasons(older, "mmap") == []
    assert load_mode_reasons(older, "none") == [
        "the log does not show the load mode (expected none)"]


def test_the_partial_offload_space_searches_it_first_off() -> None:
    partial = default_space("cuda", ["default"], (20, 21))
    assert partial.use_mmap == [False, True]
    assert default_space("cuda", ["default"]).use_mmap == [True]  # full offload: no effect
    spec = TrialSpec(model=ModelSettings(n_gpu_layers=20, use_mmap=False),
                     context=ContextSettings())
    args = server_args(spec, Workload(), "m.gguf", 2)
    assert args[args.index("-lm") + 1] == "none"
    assert "-lm" not in server_args(TrialSpec(model=ModelSettings(), context=ContextSettings()),
                                    Workload(), "m.gguf", 2)
