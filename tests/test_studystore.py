"""The study's one store (tuner/results/studystore.py) on a real SQLite optuna storage: records written
with their trials and read back whole, the environment stored once per study, the finalists and
each worker's drift, the studies listed; a damaged or foreign storage is one line. And the JSONL
export and old results folders (tuner/results/store.py), read only, torn and malformed lines skipped."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from tests.records_factory import make_record, sample_environment, store_records
from tests.report_data import drift_from, finalists_from
from tuner.errors import BadInput
from tuner.results.records import TrialState
from tuner.results.store import export_jsonl, legacy_drifts, legacy_finalists, read_jsonl
from tuner.results.storeerrors import open_storage
from tuner.results.studystore import (
    ENV_PREFIX,
    RECORD,
    default_storage,
    list_studies,
    open_study,
    records_of,
    require_study,
)

STUDY = "test-study"


def records():
    return [make_record(0, request_s=2.0), make_record(1, request_s=1.0, n_batch=1024),
            make_record(2, request_s=1.1, n_batch=2048),
            make_record(3, state=TrialState.CRASHED, n_ubatch=256)]


def url(tmp: Path) -> str:
    return default_storage(tmp / "results")


def stored(tmp: Path, recs=None) -> str:
    (tmp / "results").mkdir(exist_ok=True)
    u = url(tmp)
    store_records(u, STUDY, records() if recs is None else recs)
    return u


def test_records_read_back_whole_in_trial_order(tmp_path: Path) -> None:
    recs = records()
    u = stored(tmp_path, list(reversed(recs)))
    assert records_of(u, STUDY) == recs  # environment re-hydrated, ordered by number


def test_environment_is_stored_once_per_study(tmp_path: Path) -> None:
    recs = records()
    other = make_record(4, request_s=1.3, model_path="/models/elsewhere.gguf")
    assert other.environment != recs[0].environment
    u = stored(tmp_path, [*recs, other])
    storage = optuna.storages.RDBStorage(u)
    sid = storage.get_study_id_from_name(STUDY)
    envs = [k for k in storage.get_study_user_attrs(sid) if k.startswith(ENV_PREFIX)]
    assert len(envs) == 2, "one per distinct environment, not one per trial"
    for t in storage.get_all_trials(sid):
        assert "environment" not in t.user_attrs[RECORD]["record"]
        assert ENV_PREFIX + t.user_attrs[RECORD]["env"] in envs
    back = records_of(u, STUDY)
    assert [r.environment for r in back] == [sample_environment()] * 4 + [other.environment]
    assert back[:4] == recs and back[4] == other


def test_a_record_without_environment_round_trips(tmp_path: Path) -> None:
    rec = make_record(0).model_copy(update={"environment": None})
    assert records_of(stored(tmp_path, [rec]), STUDY) == [rec]


def test_finalists_and_drift_round_trip(tmp_path: Path) -> None:
    u = stored(tmp_path)
    store = open_study(u, STUDY)
    assert store is not None
    assert store.finalists() is None and store.drifts() == []
    report = finalists_from(records(), STUDY)
    store.save_finalists(report)
    again = report.model_copy(update={"tie": False, "reason": "fastest beyond the interval"})
    store.save_finalists(again)  # replaced whole
    first = drift_from(records(), STUDY, 1)
    second = drift_from(records(), STUDY, 2).model_copy(
        update={"worker_id": "w-test-2", "measured_at": "2026-01-01T00:00:01+00:00"})
    open_study(u, STUDY).save_drift(second)  # another sweep's store: nothing overwritten
    store.save_drift(first)
    fresh = open_study(u, STUDY)
    assert fresh.finalists() == again
    assert fresh.drifts() == [first, second]


def test_listing_studies(tmp_path: Path) -> None:
    u = url(tmp_path)
    assert list_studies(u) == [] and not (tmp_path / "results" / "optuna.db").exists(), \
        "reading a storage that is not there creates nothing"
    assert open_study(u, STUDY) is None and records_of(u, STUDY) == []
    stored(tmp_path)
    store_records(u, "b-study", [make_record(0, study="b-study")])
    optuna.create_study(study_name="not-tuner", storage=u)  # another program's study
    assert list_studies(u) == ["b-study", STUDY]
    assert require_study(u).name == "b-study"
    with pytest.raises(BadInput, match="found: b-study, test-study"):
        require_study(u, "nope")


def test_a_foreign_or_broken_value_is_skipped_or_one_line(tmp_path: Path) -> None:
    u = stored(tmp_path)
    storage = optuna.storages.RDBStorage(u)
    sid = storage.get_study_id_from_name(STUDY)
    tid = storage.create_new_trial(sid)
    storage.set_trial_user_attr(tid, RECORD, {"record": {"study": STUDY, "number": "x"}})
    tid2 = storage.create_new_trial(sid)
    storage.set_trial_user_attr(tid2, RECORD, "not a record")
    assert records_of(u, STUDY) == records(), "malformed records are skipped"
    storage.set_study_user_attr(sid, "drift:w-bad", {"worker_id": 3})
    assert open_study(u, STUDY).drifts() == []
    storage.set_study_user_attr(sid, "finalists", {"study": STUDY, "finalists": []})
    with pytest.raises(BadInput) as err:
        open_study(u, STUDY).finalists()
    assert "not a finalist report" in err.value.message and "\n" not in err.value.message


def test_a_storage_is_set_up_once_per_file_a_process_opens(tmp_path: Path) -> None:
    """optuna's setup of a SQLite storage is paid once while the file stays as it was; a file
    written since, or replaced, is opened afresh."""
    u = stored(tmp_path)
    first = open_storage(u)
    assert open_storage(u) is first
    store_records(u, "b-study", [make_record(0, study="b-study")])  # written since
    second = open_storage(u)
    assert second is not first and open_storage(u) is second
    db = tmp_path / "results" / "optuna.db"
    copy = tmp_path / "copy.db"
    copy.write_bytes(db.read_bytes())
    copy.replace(db)  # another file at the same path
    assert open_storage(u) is not second
    assert list_studies(u) == ["b-study", STUDY]


@pytest.mark.parametrize("damage", ["text", "truncated", "directory"])
def test_a_damaged_storage_is_one_line(damage: str, tmp_path: Path) -> None:
    u = stored(tmp_path)
    db = tmp_path / "results" / "optuna.db"
    if damage == "text":
        db.write_text("these are my notes, not a database\n" * 50)
    elif damage == "truncated":
        db.write_bytes(db.read_bytes()[:3000])
    else:
        db.unlink()
        db.mkdir()
    with pytest.raises(BadInput) as err:
        list_studies(u)
        records_of(u, STUDY)
    assert "\n" not in err.value.message and str(db) in err.value.message


def test_a_foreign_url_is_one_line(tmp_path: Path) -> None:
    for bad in ("foo://bar", "not-a-url"):
        with pytest.raises(BadInput) as err:
            list_studies(bad)
        assert "--storage" in err.value.message and "\n" not in err.value.message


def test_jsonl_export_reads_back_skipping_torn_and_malformed_lines(tmp_path: Path) -> None:
    recs = records()
    path = tmp_path / "export.jsonl"
    text = export_jsonl(recs)
    assert text.count("\n") == len(recs)
    lines = text.splitlines(keepends=True)
    path.write_text(lines[0] + "not json\n" + '{"study": 3}\n' + "".join(lines[1:]) + lines[0]
                    + '{"study": "test-st')  # a repeat and a torn tail
    assert read_jsonl(path) == recs


def test_an_old_results_folder_reads_read_only(tmp_path: Path) -> None:
    folder = tmp_path / STUDY
    folder.mkdir()
    recs = records()
    report = finalists_from(recs, STUDY)
    (folder / "trials.jsonl").write_text(export_jsonl(recs))
    (folder / "finalists.json").write_text(report.model_dump_json())
    first = drift_from(recs, STUDY, 1)
    (folder / "drift.jsonl").write_text(first.model_dump_json() + "\n" + '{"study": "te')
    before = sorted((p.name, p.read_bytes()) for p in folder.iterdir())
    assert read_jsonl(folder / "trials.jsonl") == recs
    assert legacy_finalists(folder) == report and legacy_drifts(folder) == [first]
    assert sorted((p.name, p.read_bytes()) for p in folder.iterdir()) == before
    (folder / "finalists.json").write_text(json.dumps({"study": STUDY, "finalists": []}))
    with pytest.raises(BadInput, match="is not a finalist report"):
        legacy_finalists(folder)


def test_a_storage_is_opened_by_url(tmp_path: Path) -> None:
    u = stored(tmp_path)
    assert open_storage(u).get_all_studies()[0].study_name == STUDY


def test_an_old_study_beside_the_storage_keeps_its_jsonl_records(tmp_path: Path) -> None:
    """A study an older version began: its optuna study in results/optuna.db without records,
    its records in results/<study>/trials.jsonl; reading it by name returns them."""
    from tuner.reports.studydata import load_study

    u = stored(tmp_path, [])
    old = tmp_path / "results" / STUDY
    old.mkdir()
    (old / "trials.jsonl").write_text(export_jsonl(records()))
    report = finalists_from(records(), STUDY)
    (old / "finalists.json").write_text(report.model_dump_json())
    data = load_study(u, STUDY)
    assert data.records == records() and data.finalists == report and data.drifts == []


def test_cli_exports_and_reads_back_an_export_by_path(tmp_path: Path) -> None:
    """The real CLI: `report --format jsonl -o` writes every record; the file (with junk lines
    and a torn tail added, as a hand-edited or cut copy would have) reads back by path, read
    only; a path that is no study is one line, exit 2."""
    from tests.cli_run import one_line_error, tuner

    stored(tmp_path)
    export = tmp_path / "export.jsonl"
    proc = tuner("report", "--results", tmp_path / "results", "--format", "jsonl", "-o", export)
    assert proc.returncode == 0, proc.stderr
    assert read_jsonl(export) == records()
    with open(export, "a") as f:
        f.write("{not json\n[1, 2]\n" + '{"study": "test-st')
    before = export.read_bytes()
    shown = tuner("report", "--study", export, "--format", "json")
    assert shown.returncode == 0, shown.stderr
    assert sorted(row["trial"] for row in json.loads(shown.stdout)) == [0, 1, 2, 3]
    assert export.read_bytes() == before
    cmp = tuner("report", "--results", tmp_path / "results", "--compare", STUDY, export)
    assert cmp.returncode == 0, cmp.stderr
    for bad in (tmp_path / "nope.jsonl", tmp_path):  # missing; a folder without trials.jsonl
        proc = tuner("report", "--results", tmp_path / "results", "--compare", STUDY, bad)
        assert proc.returncode == 2 and "no study" in one_line_error(proc)
