"""finalists.json (whole or absent, replaced atomically) and drift.jsonl (appended, whole lines
only) beside a study's trials."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.records_factory import make_record
from tests.report_data import drift_from, finalists_from
from tuner.errors import BadInput
from tuner.finalists_store import (
    append_drift,
    drift_path,
    finalists_path,
    load_drift,
    load_finalists,
    save_finalists,
)

STUDY = "test-study"


def records():
    return [make_record(0, request_s=2.0), make_record(1, request_s=1.0, n_batch=1024),
            make_record(2, request_s=1.1, n_batch=2048), make_record(3, request_s=1.5,
                                                                      n_ubatch=256)]


def test_absent_files_load_as_nothing(tmp_path: Path) -> None:
    assert load_finalists(tmp_path, STUDY) is None
    assert load_drift(tmp_path, STUDY) == []


def test_finalists_round_trip_and_replace(tmp_path: Path) -> None:
    report = finalists_from(records(), STUDY)
    path = save_finalists(tmp_path, report)
    assert path == finalists_path(tmp_path, STUDY) and path.is_file()
    assert load_finalists(tmp_path, STUDY) == report
    again = report.model_copy(update={"tie": False, "reason": "fastest beyond the interval"})
    save_finalists(tmp_path, again)
    assert load_finalists(tmp_path, STUDY) == again
    assert [p.name for p in path.parent.iterdir()] == ["finalists.json"]  # no temp files left


def test_a_broken_finalists_file_is_one_line(tmp_path: Path) -> None:
    path = finalists_path(tmp_path, STUDY)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"study": STUDY, "finalists": []}))
    with pytest.raises(BadInput) as err:
        load_finalists(tmp_path, STUDY)
    assert "is not a finalist report" in err.value.message and "\n" not in err.value.message


def test_drift_appends_and_skips_a_torn_line(tmp_path: Path) -> None:
    recs = records()
    first, second = drift_from(recs, STUDY, 1), drift_from(recs, STUDY, 2)
    append_drift(tmp_path, first)
    with open(drift_path(tmp_path, STUDY), "ab") as f:
        f.write(b'{"study": "test-st')  # a writer killed mid-line
    assert load_drift(tmp_path, STUDY) == [first]
    append_drift(tmp_path, second)  # starts on its own line
    assert load_drift(tmp_path, STUDY) == [first, second]
