"""Several `tuner sweep` processes on one study at once (real CLI processes, one real SQLite file,
the real tiny model on the CPU): every setting runs once, no process crashes, none closes
another's live trial, the production config is written once. Each race is repeated (its outcome
depends on timing, unlike a deterministic fault) and counted in the fault tally: duplicates,
crashed runs and lost trials must all be 0. The finalist stage runs in the first race of each
size only (one round, no server): it is where the config claim is held longest, which is what
that race needs; the other races race on claiming the settings, which the finalists do not
touch (the finalists and the served stage in full: tests/test_end_to_end.py)."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa

from tests import fault_tally
from tests.cli_run import start_tuner, tuner, wrote_config
from tests.spaces import write_space
from tests.workerhooks import faults
from tuner.results import claims as claims_mod
from tuner.results.studystore import default_storage, records_of

REPS = 2  # races, so more than one; the first with finalists, the second without
GRID = 6  # n_batch 8, 16, 32 x flash attention off, on


def race_args(model: Path, root: Path, *extra: str, finalists: bool = False) -> list[str]:
    space = write_space(root / "space.yaml", n_batch=[8, 16, 32], n_ubatch=[8],
                        flash_attn=[False, True])
    return ["sweep", "--model", str(model), "--device", "cpu", "--space", str(space),
            "--prompt-tokens", "32", "--gen-tokens", "2", "--repetitions", "1", "--warmup", "0",
            "--results", str(root / "results"), "--out", str(root / "production.yaml"),
            "--study", "shared", "--finalist-rounds", "1" if finalists else "0",
            "--served-requests", "0", *extra]


def start(args: list[str], env: dict[str, str] | None = None) -> Any:
    return start_tuner(*args, env=env)


def running_trials(db: Path) -> int:
    """RUNNING trials in the file, read only: optuna's loader would create missing tables and
    race the sweep that is creating them. 0 while the file or its tables do not exist yet."""
    if not db.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
            return con.execute("SELECT count(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0]
    except sqlite3.OperationalError:  # no tables yet, or locked
        return 0


def optuna_states(root: Path) -> list[optuna.trial.TrialState]:
    study = optuna.load_study(study_name="shared",
                              storage=f"sqlite:///{root / 'results' / 'optuna.db'}")
    return [t.state for t in study.get_trials(deepcopy=False)]


@pytest.mark.parametrize("n", [3])  # 3 and 4 sweeps race on PostgreSQL and journal files too
def test_concurrent_sweeps_share_one_study(n: int, tiny_model: Path, tmp_path: Path) -> None:
    for rep in range(REPS):
        root = tmp_path / f"race{rep}"
        args = race_args(tiny_model, root, finalists=rep == 0)
        procs = [start(args) for _ in range(n)]  # started together: they race on creation too
        outs = [(p.wait(timeout=300), *p.communicate()) for p in procs]
        records = records_of(default_storage(root / "results"), "shared")
        keys = [r.spec_key for r in records]
        crashed = sum(1 for rc, so, se in outs if rc != 0 or "Traceback" in se)
        duplicates = len(keys) - len(set(keys))
        lost = GRID - len(set(keys))
        fault_tally.record(f"{n} sweeps at once", crashed > 0, lost)
        fault_tally.record_duplicates(f"{n} sweeps at once", duplicates)
        assert crashed == 0, [se[-2000:] for rc, so, se in outs]
        assert duplicates == 0 and lost == 0, keys
        assert all(r.usable for r in records)
        states = optuna_states(root)
        assert optuna.trial.TrialState.RUNNING not in states
        assert states.count(optuna.trial.TrialState.COMPLETE) == GRID, states
        assert sum(int(so.split("trial(s) run now")[0].split()[-1]) for _, so, _ in outs) == GRID
        writers = [so for _, so, _ in outs if wrote_config(so)]
        ran_some = [so for _, so, _ in outs if " 0 trial(s) run now" not in so]
        # Among the sweeps that ran trials, exactly one wrote the config: the first to find
        # no trial of another running (the others say another sweep wrote it).
        assert sum(wrote_config(so) for so in ran_some) == 1, [so for _, so, _ in outs]
        assert writers and (root / "production.yaml").is_file()


def test_a_live_sweeps_trial_is_never_closed_by_another(tiny_model: Path,
                                                          tmp_path: Path) -> None:
    """The first sweep hangs in its first trial (a FAKE hang, tests/workerhooks/faults.py) until its
    timeout; a second sweep started meanwhile leaves that trial alone (its owner is alive and
    beating) and runs the rest; the first then stores its timeout. Nothing runs twice."""
    root = tmp_path / "live"
    args = race_args(tiny_model, root, "--trial-timeout", "30")
    first = start(args, env=faults.env("hang@measure:n_batch=8"))
    db = root / "results" / "optuna.db"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not running_trials(db):  # the first holds a trial
        time.sleep(0.2)
    second = tuner(*args, timeout=300)
    rc = first.wait(timeout=300)
    so, se = first.communicate()
    records = records_of(default_storage(root / "results"), "shared")
    keys = [r.spec_key for r in records]
    crashed = rc != 0 or second.returncode != 0 or "Traceback" in se + second.stderr
    fault_tally.record("live trial + second sweep", crashed, GRID - len(set(keys)))
    fault_tally.record_duplicates("live trial + second sweep", len(keys) - len(set(keys)))
    assert not crashed, (se[-2000:], second.stderr[-2000:])
    assert len(keys) == len(set(keys)) == GRID
    hung = [r for r in records if r.spec.context.n_batch == 8 and not r.spec.context.flash_attn]
    assert len(hung) == 1 and hung[0].state.value == "timeout"
    assert "another sweep of this study is still running" in second.stdout
    assert wrote_config(so)
    assert optuna.trial.TrialState.RUNNING not in optuna_states(root)


def test_stale_claim_of_another_host_is_taken_over_only_when_stale(tmp_path: Path) -> None:
    """Liveness across hosts is the heartbeat: a claim of another host with a fresh heartbeat
    is left alone, one silent for longer than stale_s() is taken over (compare-and-set)."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    engine = sa.create_engine(url)
    mine = claims_mod.Claims(engine, "s")
    with engine.begin() as conn:
        conn.execute(sa.insert(claims_mod.CLAIMS).values(
            study="s", spec_key="k", state="running", owner="other:1:x", host="other-host",
            pid=1, heartbeat=time.time(), trial_number=0))
    taken, old = mine.claim("k")
    assert not taken and old is not None and old.owner == "other:1:x"
    with engine.begin() as conn:
        conn.execute(sa.update(claims_mod.CLAIMS).values(
            heartbeat=time.time() - claims_mod.stale_s() - 1))
    taken, old = mine.claim("k")
    assert taken and old is not None and old.host == "other-host"
    again, _ = claims_mod.Claims(engine, "s").claim("k")  # now ours, and we are alive
    assert not again
