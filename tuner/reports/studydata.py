"""What a report reads and where it writes: one study's trial records with its finalist report
and drift records (either optional), found by name in a storage (tuner/results/studystore.py) or, read
only, at a path (a JSONL export, or a results folder of an older version holding trials.jsonl),
and the report file written whole (tuner/machine/output.py) after the output path is checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tuner.errors import BadInput
from tuner.machine.output import write_file
from tuner.machine.writable import check_output_path
from tuner.results.records import FinalistReport, TrialRecord, WorkerDrift
from tuner.results.store import (
    GPU_SEP,
    STUDY_NAME,
    TRIALS,
    check_study_name,
    legacy_drifts,
    legacy_finalists,
    read_export,
    read_jsonl,
    with_legacy,
)
from tuner.results.storeerrors import sqlite_path
from tuner.results.studystore import StudyStore, list_studies, open_study


@dataclass
class StudyData:
    name: str
    source: str  # the storage URL, or the file or folder it was read from
    records: list[TrialRecord]
    finalists: FinalistReport | None = None
    drifts: list[WorkerDrift] = field(default_factory=list)


def _found(storage: str) -> str:
    return ", ".join(list_studies(storage, read_only=True)) or "none"


def load_study(storage: str, study: str) -> StudyData:
    """One study by name; bad input (with the studies found) when it is not there. A study an
    older version began beside a SQLite storage keeps its trials.jsonl records (and finalists
    and drift) in ``<folder of the database>/<study>/``: they are read too, read only."""
    store = open_study(storage, check_study_name(study), read_only=True)
    if store is None:
        raise BadInput(f"no study {study!r} in {storage} (found: {_found(storage)})")
    return _data(store)


def _data(store: StudyStore) -> StudyData:
    """What ``load_study`` returns, from the study once opened."""
    study, storage = store.name, store.url
    data = StudyData(name=study, source=storage, records=store.records(),
                     finalists=store.finalists(), drifts=store.drifts())
    db = sqlite_path(storage)
    old = db.parent / study if db is not None else None
    if old is not None and (old / TRIALS).is_file():
        data.records = with_legacy(data.records, read_jsonl(old / TRIALS))
        data.finalists = data.finalists or legacy_finalists(old)
        data.drifts = data.drifts or legacy_drifts(old)
    return data


def load_path(path: Path) -> StudyData:
    """A study read only from a file: a JSONL export (any name), or an older version's study
    folder (its trials.jsonl, with finalists.json and drift.jsonl when there)."""
    p = Path(path)
    if p.is_dir():
        folder, records = p, read_jsonl(p / TRIALS)
        fin, drifts = legacy_finalists(folder), legacy_drifts(folder)
    elif p.name == TRIALS:
        folder, records = p.parent, read_jsonl(p)
        fin, drifts = legacy_finalists(folder), legacy_drifts(folder)
    else:  # an export: its records, finalist report and drift records
        records, fin, drifts = read_export(p)
    name = records[0].study if records else (p.name if p.is_dir() else p.stem)
    return StudyData(name=name, source=str(p), records=records, finalists=fin, drifts=drifts)


def resolve_study(spec: str, storage: str) -> StudyData:
    """A study named ``spec`` in ``storage``, or the study at a path: a JSONL file or a folder
    holding trials.jsonl (so studies from other machines, and old results, can be shown)."""
    p = Path(spec)
    if p.is_file() or (p.is_dir() and (p / TRIALS).is_file()):
        return load_path(p)
    if STUDY_NAME.match(spec) and (store := open_study(storage, spec, read_only=True)) is not None:
        return _data(store)
    raise BadInput(f"no study {spec!r}: not a study in {storage} (found: {_found(storage)}) "
                   "nor a JSONL file or a folder holding trials.jsonl")


def studies_to_show(storage: str, study: str | None) -> list[StudyData]:
    """The named study (or the one at a path), or every study of ``storage``; bad input when
    there is none."""
    if study:  # with the study's siblings for other GPU models (tuner/search/planner.py)
        siblings = [n for n in list_studies(storage, read_only=True) if n.startswith(study + GPU_SEP)] \
            if STUDY_NAME.match(study) else []
        return [resolve_study(study, storage), *(load_study(storage, n) for n in siblings)]
    names = list_studies(storage, read_only=True)
    if not names:
        raise BadInput(f"no sweep results in {storage}; run `tuner sweep --model FILE` first")
    return [load_study(storage, n) for n in names]


def write_output(path: Path, data: str | bytes) -> None:
    """Write the report whole or not at all."""
    check_output_path(path)
    p = Path(path)
    blob = data.encode() if isinstance(data, str) else data
    try:
        write_file(p, blob, "the report")
    except OSError as e:
        raise BadInput(f"cannot write the report to {p}: {e.strerror or e}") from None
