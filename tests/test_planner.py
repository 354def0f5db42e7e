"""The planner (tuner/search/planner.py) on a real SQLite storage, in one process: the grid walked in
order, each setting claimed once, results told to optuna with the record stored beside the
trial, what the sampler learns from (history), and the refusal of a storage that lost trials.
Sweeps in several processes, kills and stale owners: tests/test_shared_study.py,
tests/test_resume.py, tests/test_postgres_study.py."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest

from tests.records_factory import make_record
from tuner.errors import BadInput
from tuner.results.records import TrialRecord, TrialState
from tuner.search.planner import Planner

URL = "sqlite:///{}"


def record_for(number: int, key_source: TrialRecord, **kw: object) -> TrialRecord:
    """``make_record`` for the setting the planner handed out as trial ``number``."""
    return key_source.model_copy(update={"number": number, **kw})


@pytest.fixture()
def planner(tmp_path: Path):
    p = Planner("s", URL.format(tmp_path / "optuna.db"))
    yield p
    p.close()


SPECS = [make_record(0, n_batch=b, n_ubatch=128) for b in (128, 256, 512)]


def test_the_grid_is_walked_in_order_and_each_setting_told(planner: Planner) -> None:
    assert planner.enqueue([r.spec for r in SPECS], done_keys=set()) == 3
    seen = []
    while (nxt := planner.ask()) is not None:
        number, spec = nxt
        seen.append(spec.context.n_batch)
        rec = next(r for r in SPECS if r.spec_key == spec.key())
        planner.tell(number, record_for(number, rec, request_s=1.0))
    assert seen == [128, 256, 512]
    stored = planner.records()
    assert [r.spec.context.n_batch for r in stored] == [128, 256, 512]  # the full records
    assert [h.objective for h in planner.history()] == [r.objective for r in stored]
    states = {t.state for t in planner.study.get_trials(deepcopy=False)}
    assert states == {optuna.trial.TrialState.COMPLETE}


def test_a_setting_claimed_by_another_sweep_is_skipped(tmp_path: Path) -> None:
    a = Planner("s", URL.format(tmp_path / "optuna.db"))
    b = Planner("s", URL.format(tmp_path / "optuna.db"))
    try:
        for p in (a, b):
            p.enqueue([r.spec for r in SPECS], done_keys=set())
        first = a.ask()
        second = b.ask()
        assert first is not None and second is not None
        assert first[1].key() != second[1].key()  # b did not take a's setting
        assert first[0] != second[0]
    finally:
        a.close()
        b.close()


def test_failed_and_pruned_trials_teach_the_sampler(planner: Planner) -> None:
    planner.enqueue([r.spec for r in SPECS], done_keys=set())
    outcomes = {128: TrialState.INFEASIBLE, 256: TrialState.COMPLETE, 512: TrialState.PRUNED}
    while (nxt := planner.ask()) is not None:
        number, spec = nxt
        base = next(r for r in SPECS if r.spec_key == spec.key())
        state = outcomes[spec.context.n_batch]
        if state is TrialState.PRUNED:
            rec = record_for(number, base, state=state, objective=3.0)
        elif state is TrialState.INFEASIBLE:
            rec = record_for(number, base, state=state, objective=None, measurement=None)
        else:
            rec = record_for(number, base)
        planner.tell(number, rec)
    learned = {h.spec_key: h.objective for h in planner.history()}
    by_batch = {r.spec.context.n_batch: r.spec_key for r in SPECS}
    assert learned[by_batch[128]] is None  # out of memory: a failure, penalised by the sampler
    assert learned[by_batch[512]] == 3.0  # pruned: its partial objective, worse than the best
    assert learned[by_batch[256]] == pytest.approx(SPECS[1].objective)
    trials = {t.user_attrs["spec_key"]: t for t in planner.study.get_trials(deepcopy=False)}
    assert trials[by_batch[512]].state is optuna.trial.TrialState.PRUNED
    assert trials[by_batch[128]].state is optuna.trial.TrialState.FAIL


def test_a_storage_that_lost_trials_is_refused(planner: Planner) -> None:
    with pytest.raises(BadInput, match="emptied or replaced"):
        planner.check_numbers([make_record(7)])  # records name #7, the storage holds none


def test_a_setting_whose_owner_died_is_taken_back_by_a_running_sweep(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """b skipped the setting a held; a then went silent (its heartbeat stale): b, still
    running, claims it again and fails a's trial, so a host that dies costs the study nothing."""
    url = URL.format(tmp_path / "optuna.db")
    a, b = Planner("s", url), Planner("s", url)
    try:
        one = [SPECS[0].spec]
        a.enqueue(one, done_keys=set())
        b.enqueue(one, done_keys=set())
        held = a.ask()
        assert held is not None
        assert b.ask() is None  # a holds it and is alive: b leaves it alone
        a.claims.stop_heartbeat()
        monkeypatch.setenv("TUNER_STALE_S", "0.2")
        monkeypatch.setenv("TUNER_HEARTBEAT_S", "0.1")  # the stale time must exceed it
        time.sleep(0.5)
        retaken = b.ask()
        assert retaken is not None and retaken[1].key() == held[1].key()
        assert retaken[0] != held[0]  # a new trial
        old = next(t for t in b.study.get_trials(deepcopy=False) if t.number == held[0])
        assert old.state is optuna.trial.TrialState.FAIL
        assert old.user_attrs["tuner_state"] == "interrupted"
    finally:
        a.close()
        b.close()
