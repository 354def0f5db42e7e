"""``--max-vram`` (tuner/search/constraints.py): the memory a trial took, trials over the cap kept as
infeasible with the reason and taught to the sampler as failures, a config within the cap,
and no config (exit 3, one line) when no setting fits. The sweeps run the real CLI on the
tiny model, whose CPU build gives the load log's buffer sizes in place of NVML's peak."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from tests.cli_run import one_line_error, tuner
from tests.records_factory import make_record
from tests.spaces import write_space
from tuner.results.records import TrialState
from tuner.results.studystore import default_storage, list_studies, records_of
from tuner.search.constraints import apply_vram_cap, no_fit_reason, over_vram, vram_mib

# ---- the figure and the check -------------------------------------------------------------


def test_nvml_peak_first_else_the_cuda_buffers_else_every_buffer() -> None:
    gpu = make_record(0, device="cuda")  # gpu_peak_mib 1200 (NVML)
    assert vram_mib(gpu) == 1200.0
    no_nvml = make_record(1, device="cuda").model_copy(update={
        "measurement": make_record(1, device="cpu").measurement,
        "buffers_mib": {"model": {"CUDA0": 900.0, "CPU_Mapped": 70.0},
                        "kv": {"CUDA0": 256.0}, "compute": {"CUDA0": 300.0,
                                                            "CUDA_Host": 12.0}}})
    assert vram_mib(no_nvml) == 900.0 + 256.0 + 300.0  # host buffers are not the GPU's
    cpu = make_record(2, device="cpu").model_copy(update={
        "buffers_mib": {"model": {"CPU_Mapped": 2.75}, "kv": {"CPU": 0.25},
                        "compute": {"CPU": 0.69}}})
    assert vram_mib(cpu) == pytest.approx(3.69)
    assert vram_mib(make_record(3, device="cpu")) is None


def test_over_the_cap_is_infeasible_with_the_reason_and_never_usable() -> None:
    rec = make_record(0, device="cuda")
    assert over_vram(rec, None) is None and over_vram(rec, 1200.0) is None
    assert apply_vram_cap(rec, 1200.0) is rec
    capped = apply_vram_cap(rec, 1000.0)
    assert capped.state is TrialState.INFEASIBLE and not capped.usable
    assert capped.error == "over --max-vram: 1,200.0 MiB > 1,000.0 MiB"
    assert capped.measurement == rec.measurement  # kept, with its figures
    # Only a complete trial is judged: a crash stays a crash.
    crashed = make_record(1, state=TrialState.CRASHED)
    assert apply_vram_cap(crashed, 1.0) is crashed
    assert no_fit_reason([capped], 1000.0) == (
        "every measured trial is over --max-vram 1,000.0 MiB (the lightest took 1,200.0 MiB)")
    assert no_fit_reason([capped], None) is None
    assert no_fit_reason([capped, make_record(2, device="cuda", verified=False)], 1500.0) is None


# ---- real sweeps --------------------------------------------------------------------------

# On the tiny model at n_ctx 256 the load log names model 2.75 + KV 0.25 MiB and a compute
# buffer of 0.69 MiB at n_ubatch 64, 0.17 MiB at 16: 3.69 and 3.17 MiB in all.
CAP = 3.5


def sweep(root: Path, model: Path, cap: float) -> tuple[object, list]:
    write_space(root / "space.yaml", n_batch=[64], n_ubatch=[64, 16])
    proc = tuner("sweep", "--model", model, "--device", "cpu", "--space", root / "space.yaml",
                 "--prompt-tokens", 64, "--gen-tokens", 2, "--n-ctx", 256, "--repetitions", 2,
                 "--finalist-rounds", 0, "--served-requests", 0, "--max-vram", cap,
                 "--results", root / "results", "--out", root / "production.yaml", cwd=root)
    studies = list_studies(default_storage(root / "results"))
    records = records_of(default_storage(root / "results"), studies[0]) if studies else []
    return proc, records


def test_settings_over_the_cap_are_infeasible_and_the_config_fits(tiny_model: Path,
                                                                   tmp_path: Path) -> None:
    proc, records = sweep(tmp_path, tiny_model, CAP)
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_ubatch = {r.spec.context.n_ubatch: r for r in records}
    assert sorted(by_ubatch) == [16, 64]
    heavy, light = by_ubatch[64], by_ubatch[16]
    assert vram_mib(heavy) > CAP >= vram_mib(light), (vram_mib(heavy), vram_mib(light))
    assert heavy.state is TrialState.INFEASIBLE and not heavy.usable
    assert heavy.error is not None and heavy.error.startswith("over --max-vram")
    assert heavy.measurement is not None  # kept with its figures
    assert light.usable
    entry = yaml.safe_load((tmp_path / "production.yaml").read_text())["models"][0]
    assert entry["n_ubatch"] == 16
    # The sampler learns it as a failure, as it learns an out-of-memory trial.
    study = list_studies(default_storage(tmp_path / "results"))[0]
    trials = optuna.load_study(study_name=study, storage=(
        f"sqlite:///{tmp_path / 'results' / 'optuna.db'}")).trials
    told = next(t for t in trials if t.number == heavy.number)
    assert told.state is optuna.trial.TrialState.FAIL
    assert told.user_attrs["tuner_state"] == "infeasible"
    report = tuner("report", "--results", tmp_path / "results", "--format", "csv")
    assert report.returncode == 0 and "over --max-vram" in report.stdout, report.stderr


def test_a_cap_below_every_setting_gives_no_config_and_one_reason(tiny_model: Path,
                                                                  tmp_path: Path) -> None:
    proc, records = sweep(tmp_path, tiny_model, 1.0)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert records and all(r.state is TrialState.INFEASIBLE for r in records)
    reason = [ln for ln in proc.stdout.splitlines() if ln.startswith("no production config")]
    assert len(reason) == 1
    assert reason[0].startswith("no production config written: every measured trial is over "
                                "--max-vram 1.0 MiB (the lightest took 3.")
    assert not (tmp_path / "production.yaml").exists()


@pytest.mark.parametrize("cap", ["0", "-5", "nan", "inf", "lots"])
def test_a_cap_that_is_not_a_positive_number_is_bad_input(tiny_model: Path, tmp_path: Path,
                                                           cap: str) -> None:
    proc = tuner("sweep", "--model", tiny_model, "--device", "cpu", "--max-vram", cap,
                 "--results", tmp_path / "r", "--out", tmp_path / "p.yaml", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "--max-vram" in one_line_error(proc)
    assert not (tmp_path / "r").exists()
