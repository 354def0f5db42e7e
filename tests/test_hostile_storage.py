"""Hostile storages (issue 32): a journal whose last record was cut (a full disk, a power loss)
loses no finished record and is never written onto; a journal line optuna cannot apply, a file
that is no study, a binary file, an empty SQLite file: one line, exit 2, and a report writes
nothing into any of them. Real CLI processes, the real tiny model on the CPU."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.cli_run import one_line_error, tuner
from tests.spaces import write_space
from tuner.results.studystore import open_study


def sweep(model: Path, root: Path, storage: str, *extra: object):
    space = write_space(root / "s.yaml", n_batch=[8, 16], n_ubatch=[8])
    return tuner("sweep", "--model", model, "--device", "cpu", "--prompt-tokens", 16,
                 "--gen-tokens", 2, "--repetitions", 1, "--warmup", 0, "--space", space,
                 "--results", root / "results", "--out", root / "production.yaml",
                 "--study", "h", "--finalist-rounds", 0, "--storage", storage, *extra)


@pytest.fixture(scope="module")
def journal_template(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real journal study: 1 of its 2 settings finished."""
    root = tmp_path_factory.mktemp("journal")
    proc = sweep(tiny_model, root, f"journal:{root / 'j.log'}", "--trials", 1)
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.fixture()
def journal(journal_template: Path, tmp_path: Path) -> Path:
    shutil.copytree(journal_template, tmp_path, dirs_exist_ok=True)
    return tmp_path


def cut_last_line(path: Path) -> bytes:
    """Cut the journal's last record in half, as a write that did not finish leaves it; the
    half left in the file."""
    data = path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    half = data[start:start + (len(data) - start) // 2]
    path.write_bytes(data[:start] + half)
    return half


def test_a_cut_journal_record_is_set_aside_and_nothing_finished_is_lost(
        journal: Path, tiny_model: Path) -> None:
    log = journal / "j.log"
    url = f"journal:{log}"
    half = cut_last_line(log)
    cut = log.read_bytes()
    store = open_study(url, "h", read_only=True)
    assert store is not None
    before = store.records()
    assert len(before) >= 1
    # a report reads every whole record and writes nothing, not even the repair
    shown = tuner("report", "--storage", url, "--format", "json")
    assert shown.returncode == 0, shown.stderr
    assert "cut record" in shown.stderr and "Traceback" not in shown.stderr
    assert len(json.loads(shown.stdout)) == len(before)
    assert log.read_bytes() == cut and not log.with_name("j.log.torn").exists()
    # the next sweep sets the cut record aside (said in one line) and finishes the study
    proc = sweep(tiny_model, journal, url)
    assert proc.returncode == 0, proc.stderr
    assert "set aside in" in proc.stderr and proc.stderr.count("cut record") == 1
    assert log.with_name("j.log.torn").read_bytes() == half + b"\n"
    after = open_study(url, "h").records()
    by_id = {r.trial_id: r for r in after}
    assert all(by_id.get(r.trial_id) == r for r in before), "a finished record was lost"
    keys = [r.spec_key for r in after]
    assert len(keys) == len(set(keys)) == 2, "every setting stored once"
    again = tuner("report", "--storage", url, "--format", "json")
    assert again.returncode == 0, again.stderr
    assert len(json.loads(again.stdout)) == 2
    assert "cut record" not in again.stderr


@pytest.mark.parametrize("line", [b'{"op_code": 999}\n', b"{not json\n", b"[1, 2]\n"])
def test_a_journal_line_optuna_cannot_apply_is_one_line(journal: Path, tiny_model: Path,
                                                        line: bytes) -> None:
    log = journal / "j.log"
    with open(log, "ab") as f:
        f.write(line)
    before = log.read_bytes()
    number = before.count(b"\n")
    url = f"journal:{log}"
    for proc in (tuner("report", "--storage", url), sweep(tiny_model, journal, url)):
        assert proc.returncode == 2, proc.stderr
        assert f"line {number}" in one_line_error(proc)
    assert log.read_bytes() == before


def test_report_on_an_empty_sqlite_file_writes_nothing_into_it(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    db = tmp_path / "results" / "optuna.db"
    db.touch()
    proc = tuner("report", "--results", tmp_path / "results")
    assert proc.returncode == 2 and "empty file" in one_line_error(proc)
    assert db.stat().st_size == 0
    other = tmp_path / "other.db"
    other.write_bytes(os.urandom(4096))
    proc = tuner("report", "--storage", f"sqlite:///{other}")
    assert proc.returncode == 2 and "not a SQLite database" in one_line_error(proc)


@pytest.mark.parametrize("content", [Path("/etc/passwd").read_bytes(), os.urandom(3000),
                                     b"\x00" * 100 + b"\n"])
def test_report_of_a_file_that_holds_no_record_is_one_line(tmp_path: Path,
                                                           content: bytes) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(content)
    for args in (("--study", path), ("--compare", path, path)):
        proc = tuner("report", "--results", tmp_path / "results", *args)
        assert proc.returncode == 2, proc.stderr
        assert "holds no tuner trial record" in one_line_error(proc)
    assert not (tmp_path / "results").exists()


def test_junk_lines_of_an_export_are_counted_and_said(cpu_sweep: dict, tmp_path: Path) -> None:
    export = tmp_path / "e.jsonl"
    proc = tuner("report", "--results", cpu_sweep["results"], "--study", cpu_sweep["study"],
                 "--format", "jsonl", "-o", export)
    assert proc.returncode == 0, proc.stderr
    with open(export, "a") as f:
        f.write("junk\n[1]\n{\"study\": \"x")
    shown = tuner("report", "--study", export, "--format", "json")
    assert shown.returncode == 0, shown.stderr
    assert "skipped 2 line(s) that are not a tuner trial record" in shown.stderr
    assert "a cut last line" in shown.stderr


def test_report_on_a_database_a_killed_sweep_left_half_made(tmp_path: Path) -> None:
    """A database left with tables and no alembic stamp (a sweep SIGKILLed while optuna created
    its schema in place, as sweeps did before they made it beside and linked it; found by a
    hostile run): the report says so and writes nothing (it used to fail writing the stamp)."""
    import sqlalchemy as sa
    from optuna.storages._rdb import models

    db = tmp_path / "results" / "optuna.db"
    db.parent.mkdir()
    engine = sa.create_engine(f"sqlite:///{db}")
    models.BaseModel.metadata.create_all(engine)
    engine.dispose()
    before = db.read_bytes()
    proc = tuner("report", "--results", tmp_path / "results")
    assert proc.returncode == 2 and "a sweep was stopped while it created" in one_line_error(proc)
    assert f"storage {db} " in one_line_error(proc)
    assert db.read_bytes() == before


def test_a_report_while_a_sweep_creates_the_database_never_sees_it_half_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A report that runs while a live sweep is between optuna's schema transactions (found by
    CI: test_report_while_a_sweep_writes, once) sees no database yet, never a half-made one. The
    report is a real process started at that moment: after the tables and the version row,
    before the alembic stamp."""
    from optuna.storages._rdb import storage as rdb

    from tuner.results.storeerrors import open_storage

    results = tmp_path / "results"
    results.mkdir()
    seen: list = []
    made_alembic = rdb._VersionManager._init_alembic

    def report_then_stamp(self) -> None:
        if not seen:
            seen.append(tuner("report", "--results", results))
        made_alembic(self)

    monkeypatch.setattr(rdb._VersionManager, "_init_alembic", report_then_stamp)
    open_storage(f"sqlite:///{results / 'optuna.db'}")
    during = seen[0]
    assert during.returncode != 0 and "no sweep results" in one_line_error(during), \
        during.stderr
    after = tuner("report", "--results", results)
    assert "no sweep results" in one_line_error(after) or "no study" in one_line_error(after)
    assert "stopped while" not in after.stderr
    assert sorted(p.name for p in results.iterdir()) == ["optuna.db"]
