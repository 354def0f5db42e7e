"""`tuner sweep --gpus 0,1` (tuner/sweep/multigpu.py): one sweep process per GPU on one study, each
given its GPU through CUDA_VISIBLE_DEVICES; and the NVML device a worker reads for that GPU.

This machine has no GPU: the end-to-end case runs the real orchestration (``run_per_gpu``, what
``--gpus`` calls) on the CPU build (two real sweep processes on the tiny model, one real SQLite
study), where each sweep records the GPU it was given; which GPU llama.cpp then uses needs a
CUDA machine (docs/benchmarks.md). The command line refuses ``--gpus`` with ``--device cpu``
(two sweeps would share the cores), so that case calls the orchestration itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tests.cli_run import REPO, one_line_error, tuner
from tests.spaces import write_space
from tuner.errors import BadInput
from tuner.results.studystore import default_storage, records_of
from tuner.sweep.multigpu import parse_gpus, without_gpus
from tuner.worker.gpumem import nvml_handle


def test_gpu_lists() -> None:
    assert parse_gpus("0,1") == ["0", "1"]
    assert parse_gpus(" 2 , 3 ") == ["2", "3"]
    assert parse_gpus("GPU-8a1b2c3d-0000-1111-2222-333344445555") == [
        "GPU-8a1b2c3d-0000-1111-2222-333344445555"]
    for bad, words in (("", "GPU indices"), ("0,,1", "GPU indices"), ("0,x", "'x' is neither"),
                       ("1,1", "names a GPU twice")):
        with pytest.raises(BadInput, match=words):
            parse_gpus(bad)


def test_the_children_get_the_command_without_gpus() -> None:
    assert without_gpus(["sweep", "--gpus", "0,1", "--model", "m"]) == ["sweep", "--model", "m"]
    assert without_gpus(["--debug", "sweep", "--gpus=0,1", "--trials", "2"]) == [
        "--debug", "sweep", "--trials", "2"]


class FakeNvml:
    """FAKE NVML (no NVIDIA driver here): records which device handle was asked for."""

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:  # noqa: N802 - NVML's name
        return f"index {i}"

    def nvmlDeviceGetHandleByUUID(self, u: str) -> str:  # noqa: N802 - NVML's name
        return f"uuid {u}"


@pytest.mark.parametrize("visible, cuda_index, handle", [
    (None, 0, "index 0"),  # every GPU visible: CUDA's numbers are NVML's (PCI bus order)
    ("1", 0, "index 1"),  # a worker given GPU 1 reads GPU 1
    ("3,1", 1, "index 1"),
    ("GPU-abc", 0, "uuid GPU-abc"),
])
def test_a_worker_reads_the_gpu_it_was_given(visible: str | None, cuda_index: int, handle: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert nvml_handle(FakeNvml(), cuda_index) == handle


def test_a_repeated_gpu_is_bad_input(tiny_model: Path, tmp_path: Path) -> None:
    proc = tuner("sweep", "--model", tiny_model, "--device", "cuda", "--gpus", "0,0",
                 "--results", tmp_path / "results", "--out", tmp_path / "p.yaml")
    assert proc.returncode == 2
    assert "names a GPU twice" in one_line_error(proc)
    assert not (tmp_path / "results").exists()


def test_one_sweep_per_gpu_on_one_study(tiny_model: Path, tmp_path: Path) -> None:
    space = write_space(tmp_path / "s.yaml", n_batch=[8, 16, 32], n_ubatch=[8],
                        flash_attn=[False, True])
    args = ["sweep", "--model", str(tiny_model), "--device", "cpu", "--space", str(space),
            "--prompt-tokens", "32", "--gen-tokens", "2", "--repetitions", "1", "--warmup", "0",
            "--results", str(tmp_path / "results"), "--out", str(tmp_path / "p.yaml"),
            "--study", "fleet", "--finalist-rounds", "0", "--served-requests", "0"]
    run = ("import sys; from tuner.sweep.multigpu import run_per_gpu; "
           f"sys.exit(run_per_gpu({args!r}, ['0', '1']))")
    proc = subprocess.run([sys.executable, "-c", run], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    # Both children ran and each printed its own summary, prefixed with its GPU.
    for g in ("0", "1"):
        assert any(ln.startswith(f"gpu {g} | study fleet:") for ln in lines), proc.stdout
    url = default_storage(tmp_path / "results")
    trials = optuna.load_study(study_name="fleet", storage=url).get_trials(deepcopy=False)
    done = [t.user_attrs["spec_key"] for t in trials
            if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 6 and len(set(done)) == 6  # every setting once, none twice
    records = records_of(url, "fleet")
    assert len(records) == 6
    gpus = {r.environment.cuda_visible_devices for r in records if r.environment}
    assert gpus <= {"0", "1"} and gpus, gpus
    assert (tmp_path / "p.yaml").is_file()  # one of them wrote the config
