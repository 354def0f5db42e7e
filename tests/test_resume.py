"""The parent killed with SIGKILL mid-sweep and started again continues the same study: every
completed trial kept once, the interrupted one retried, nothing duplicated. And `tuner report`
read while a sweep writes sees whole records only. Real CLI, real workers, a real GGUF model
(the generated tiny llama: what is under test is the parent's bookkeeping, not the model)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import optuna
import pytest

from tests import fault_tally
from tests.cli_run import REPO, start_tuner, tuner
from tests.spaces import write_space
from tests.workerhooks import faults
from tuner.results.studystore import RECORD, default_storage, records_of

GRID = 8
State = optuna.trial.TrialState


def sweep_args(model: Path, root: Path, *extra: str, **space: object) -> list[str]:
    values = space or {"n_batch": [16, 32, 64, 128], "n_ubatch": [16],
                       "flash_attn": [False, True]}
    path = write_space(root / "space.yaml", **values)
    return ["sweep", "--model", str(model), "--device", "cpu", "--space", str(path),
            "--prompt-tokens", "128", "--gen-tokens", "4", "--n-ctx", "256", "--repetitions",
            "1", "--warmup", "0", "--trials-per-worker", "4", "--results", str(root / "results"),
            "--out", str(root / "production.yaml"),
            "--study", "resume", "--finalist-rounds", "0", *extra]


def start(args: list[str], env: dict[str, str] | None = None) -> Any:
    return start_tuner(*args, env=env)


def records(root: Path) -> list:
    return records_of(default_storage(root / "results"), "resume")


def optuna_trials(root: Path) -> list:
    study = optuna.load_study(study_name="resume",
                              storage=f"sqlite:///{root / 'results' / 'optuna.db'}")
    return study.get_trials(deepcopy=False)


def stored(root: Path) -> int:
    """How many records the study holds, by one SQL count: ``records`` builds every record, a
    tenth of a CPU-second, and polled every 20 ms it kept a core busy while the test waited."""
    db = root / "results" / "optuna.db"
    if not db.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            return conn.execute("SELECT COUNT(*) FROM trial_user_attributes "
                                f"WHERE key = '{RECORD}'").fetchone()[0]
    except sqlite3.OperationalError:  # the tables are not made yet
        return 0


def wait_for(pred, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


# Three kill points: early (in the first worker), in the second worker, near the end. Where
# exactly the parent dies is a race, so each point is a different window; each is its own test,
# so that the three run side by side under pytest-xdist.
@pytest.mark.parametrize("kill_after", [1, 3, 6])
def test_parent_killed_and_restarted_loses_and_duplicates_nothing(kill_after: int,
                                                                   tiny_model: Path,
                                                                   tmp_path: Path) -> None:
    root = tmp_path / "run"
    args = sweep_args(tiny_model, root)
    proc = start(args)
    wait_for(lambda: stored(root) >= kill_after)
    proc.send_signal(signal.SIGKILL)  # the parent only; its worker sees the pipe close
    proc.wait(timeout=30)
    kept = {r.trial_id: r for r in records(root)}
    stored_numbers = {r.number for r in kept.values()}
    # What the restart must retry: trials the dead parent left RUNNING with no record.
    orphans = [t.number for t in optuna_trials(root)
               if t.state == State.RUNNING and t.number not in stored_numbers]
    again = tuner(*args)
    crashed = again.returncode != 0 or "Traceback" in again.stderr
    final = records(root)
    keys = [r.spec_key for r in final]
    fault_tally.record("parent SIGKILL + restart", crashed, GRID - len(set(keys)))
    fault_tally.record_duplicates("parent SIGKILL + restart", len(keys) - len(set(keys)))
    assert not crashed, again.stderr[-3000:]
    assert len(final) == GRID and len(set(keys)) == GRID, "each setting exactly once"
    by_id = {r.trial_id: r for r in final}
    assert all(by_id.get(i) == r for i, r in kept.items()), "kept records are unchanged"
    # The restart planned exactly what was missing and retried exactly the orphans.
    planned = f"{GRID} settings in the grid, {GRID - len(kept)} to run"
    assert planned in again.stderr, (planned, again.stderr[-2000:])
    retried = f"({len(orphans)} interrupted trial(s) retried)"
    assert (retried in again.stderr) == bool(orphans), (orphans, again.stderr[-2000:])
    assert all(r.usable for r in final)
    states = [t.state for t in optuna_trials(root)]
    assert State.RUNNING not in states
    assert states.count(State.COMPLETE) == GRID
    assert states.count(State.FAIL) == len(orphans), "each orphan closed as failed"


def test_report_while_a_sweep_writes(tiny_model: Path, tmp_path: Path) -> None:
    """The sweep hangs in its fifth trial (a FAKE hang, tests/workerhooks/faults.py) until the trial
    timeout: so the reader is sure to read the study part-written, not only before and after."""
    root = tmp_path / "run"
    batches = [16, 32, 48, 64, 80, 96, 112, 128]
    proc = start(sweep_args(tiny_model, root, "--trial-timeout", "12", n_batch=batches,
                            n_ubatch=[16]),
                 env=faults.env("hang@measure:n_batch=80"))
    counts: list[int] = []
    reader_errors: list[str] = []
    deadline = time.monotonic() + 240
    while proc.poll() is None or not counts:
        assert time.monotonic() < deadline, "the sweep did not end in time"
        rep = tuner("report", "--results", root / "results", "--format", "json", timeout=60)
        if rep.returncode == 0:
            rows = json.loads(rep.stdout)  # always whole, parseable records
            assert all(row["state"] for row in rows)
            counts.append(len(rows))
        elif "no sweep results" in rep.stderr or "no study" in rep.stderr:
            assert not counts, "results that were there vanished"  # nothing stored yet
        else:
            reader_errors.append(rep.stderr[-2000:])
        time.sleep(0.5)  # each read is a whole `tuner report` process: a CPU-second
    out, err = proc.communicate(timeout=60)
    # The last read may have started before the sweep stored its last record: one more, after.
    last = tuner("report", "--results", root / "results", "--format", "json", timeout=60)
    assert last.returncode == 0, last.stderr
    counts.append(len(json.loads(last.stdout)))
    final = records(root)
    lost = GRID - len({r.spec_key for r in final})
    crashed = proc.returncode != 0 or "Traceback" in err
    fault_tally.record("report during sweep", crashed or bool(reader_errors), lost)
    assert not crashed, err[-2000:]
    assert not reader_errors, reader_errors
    assert lost == 0 and len(final) == GRID
    assert counts == sorted(counts), "a reader never sees records disappear"
    assert any(0 < c < GRID for c in counts), f"never read mid-sweep: {counts}"
    assert counts[-1] == GRID
    hung = [r for r in final if r.spec.context.n_batch == 80]
    assert len(hung) == 1 and hung[0].state.value == "timeout"


KILLED_AFTER_STORING = """
import os, signal, sys
from tests.records_factory import make_record
from tuner.search.planner import Planner
from tuner.specs import Workload
url, = sys.argv[1:]
rec = make_record(0, device="cpu", n_batch=24, n_ubatch=16, study="resume",
                  workload=Workload(prompt_tokens=128, gen_tokens=4, n_ctx=256, repetitions=1,
                                    warmup=0))
planner = Planner("resume", url)
planner.enqueue([rec.spec], set())
number, spec = planner.ask()
rec = rec.model_copy(update={"number": number, "trial_id": "killed-after-storing",
                           "environment": None})  # no model hash to contradict
trial_id = planner.storage.get_trial_id_from_study_id_trial_number(
    planner.study._study_id, number)
planner.store.put_record(trial_id, rec)  # what Planner.tell does first ...
print(number, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # ... and the parent dies before the state is told
"""


def test_record_stored_but_not_told_is_told_on_resume(tiny_model: Path, tmp_path: Path) -> None:
    """A parent killed between storing a record with its trial and telling the trial's state
    leaves a RUNNING trial holding its record: the next sweep tells it from the record (kept,
    not retried)."""
    root = tmp_path / "told"
    args = sweep_args(tiny_model, root)
    first = tuner(*args, "--trials", "2")
    assert first.returncode == 0, first.stderr
    url = default_storage(root / "results")
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_STORING, url], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                            text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    number = int(killed.stdout.split()[0])
    assert {t.number: t.state for t in optuna_trials(root)}[number] == State.RUNNING
    assert [r.number for r in records(root)] == [0, 1, number]
    again = tuner(*args)
    assert again.returncode == 0, again.stderr
    assert "interrupted trial(s) retried" not in again.stderr, "nothing was lost"
    trials = {t.number: t for t in optuna_trials(root)}
    assert trials[number].state == State.COMPLETE
    assert trials[number].user_attrs["trial_id"] == "killed-after-storing"
    final = records(root)
    assert len(final) == GRID + 1 and len({r.spec_key for r in final}) == GRID + 1
    assert State.RUNNING not in {t.state for t in trials.values()}
