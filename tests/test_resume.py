"""The parent killed with SIGKILL mid-sweep and started again continues the same study: every
completed trial kept once, the interrupted one retried, nothing duplicated. And `tuner report`
read while a sweep writes sees whole records only. Real CLI, real workers, real SmolLM2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna

from tests import fault_tally
from tests.cli_run import REPO, tuner
from tests.spaces import write_space
from tuner.store import Store

GRID = 8


def sweep_args(model: Path, root: Path) -> list[str]:
    space = write_space(root / "space.yaml", n_batch=[16, 32, 64, 128], n_ubatch=[16],
                        flash_attn=[False, True])
    return ["sweep", "--model", str(model), "--device", "cpu", "--space", str(space),
            "--prompt-tokens", "128", "--gen-tokens", "8", "--n-ctx", "256", "--repetitions",
            "1", "--results", str(root / "results"), "--out", str(root / "production.yaml"),
            "--study", "resume", "--finalist-rounds", "0"]


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "tuner.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def records(root: Path) -> list:
    return Store(root / "results", "resume").records()


def wait_for(pred, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_parent_killed_and_restarted_loses_and_duplicates_nothing(smollm2_path: Path,
                                                                   tmp_path: Path) -> None:
    for run, kill_after in enumerate((1, 3, 6)):
        root = tmp_path / f"run{run}"
        args = sweep_args(smollm2_path, root)
        proc = start(args)
        wait_for(lambda: len(records(root)) >= kill_after)
        proc.send_signal(signal.SIGKILL)  # the parent only; its worker sees the pipe close
        proc.wait(timeout=30)
        kept = {r.trial_id: r.spec_key for r in records(root)}
        assert len(kept) >= kill_after
        again = tuner(*args)
        crashed = again.returncode != 0 or "Traceback" in again.stderr
        final = records(root)
        keys = [r.spec_key for r in final]
        fault_tally.record("parent SIGKILL + restart", crashed, GRID - len(set(keys)))
        assert not crashed, again.stderr[-3000:]
        assert len(final) == GRID and len(set(keys)) == GRID, "each setting exactly once"
        assert set(kept) <= {r.trial_id for r in final}, "completed trials are kept as they were"
        if len(kept) < GRID:
            assert "retried" in again.stderr or "to run" in again.stderr
        assert all(r.usable for r in final)
        study = optuna.load_study(study_name="resume",
                                  storage=f"sqlite:///{root / 'results' / 'optuna.db'}")
        states = [t.state for t in study.get_trials(deepcopy=False)]
        assert optuna.trial.TrialState.RUNNING not in states
        assert states.count(optuna.trial.TrialState.COMPLETE) == GRID


def test_report_while_a_sweep_writes(smollm2_path: Path, tmp_path: Path) -> None:
    for run in range(2):
        root = tmp_path / f"run{run}"
        proc = start(sweep_args(smollm2_path, root))
        counts: list[int] = []
        failures = 0
        while proc.poll() is None or not counts:
            rep = tuner("report", "--results", root / "results", "--format", "json")
            if rep.returncode == 0:
                rows = json.loads(rep.stdout)  # always whole, parseable records
                assert all(row["state"] for row in rows)
                counts.append(len(rows))
            else:  # before the first trial is stored there is nothing to report
                assert "no sweep results" in rep.stderr or "no study" in rep.stderr, rep.stderr
                failures += 1
        assert proc.returncode == 0, proc.stderr.read()[-2000:]
        lost = GRID - len(records(root))
        fault_tally.record("report during sweep", False, lost)
        assert counts == sorted(counts), "a reader never sees records disappear"
        assert lost == 0


def test_torn_record_is_dropped_and_repaired(smollm2_path: Path, tmp_path: Path) -> None:
    """A parent killed inside a write leaves half a line: readers skip it, the next append cuts
    it, and its trial (never told done) is run again."""
    root = tmp_path / "torn"
    args = sweep_args(smollm2_path, root)
    first = tuner(*args[:-2], "--study", "resume", "--trials", "2")
    assert first.returncode == 0, first.stderr
    path = Store(root / "results", "resume").path
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"study": "resume", "trial_id": "half-writ')
    assert len(records(root)) == 2
    again = tuner(*args)
    assert again.returncode == 0, again.stderr
    assert len(records(root)) == GRID
    assert all(line.endswith("}") for line in path.read_text().splitlines())
    assert path.read_bytes().startswith(whole)
