"""A study made before the sweep became its own layer (issue 33) is read and resumed after it:
tests/fixtures/study-dc2cac9/optuna.db is the SQLite storage a real `tuner sweep --trials 1`
of commit dc2cac9 left (the tiny model of tests/conftest.py on the CPU, the 2-setting space
beside it): one trial finished, the other enqueued. Today's `tuner report` reads it, and
today's `tuner sweep` on the same study runs only the setting left, keeping trial #0 as stored."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from tests.cli_run import tuner

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "study-dc2cac9"
MODEL_SHA256 = "cdfce48a41c24577f0eca0d0893a543ca0f8115c2646bd725099ebe89d199d16"
STUDY = "before-33"


def _report(results: Path) -> list[dict]:
    out = tuner("report", "--results", results, "--study", STUDY, "--format", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_study_of_commit_dc2cac9_is_read_and_resumed(tiny_model: Path, tmp_path: Path) -> None:
    # The stored records carry the model's hash: the study's model is this one, byte for byte.
    assert hashlib.sha256(tiny_model.read_bytes()).hexdigest() == MODEL_SHA256
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(FIXTURE / "optuna.db", results / "optuna.db")
    (before,) = _report(results)
    assert (before["trial"], before["fa"], before["state"]) == (0, "off", "complete")
    assert before["environment"]["model_sha256"] == MODEL_SHA256

    out = tuner("sweep", "--model", tiny_model, "--device", "cpu", "--space",
                FIXTURE / "space.yaml", "--results", results, "--study", STUDY,
                "--out", tmp_path / "production.yaml", "--prompt-tokens", 16, "--gen-tokens", 2,
                "--n-ctx", 64, "--repetitions", 2, "--finalist-rounds", 0,
                "--served-requests", 0, "--sampler", "grid", "--no-sentinel")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"study {STUDY}: 1 trial(s) run now, 2 stored" in out.stdout, out.stdout
    assert "every planned setting measured" in out.stdout

    after = {r["trial"]: r for r in _report(results)}
    assert sorted(after) == [0, 1]
    assert after[1]["fa"] == "on" and after[1]["state"] == "complete"
    kept = {k: v for k, v in after[0].items() if k != "rank"}
    assert kept == {k: v for k, v in before.items() if k != "rank"}  # not measured again
