"""What a report reads and where it writes: one study's trial records with its finalist report
and drift records (either optional), found by name under a results folder or by path, and the
report file written whole (temp file, fsync, rename) after the output path is checked."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tuner.errors import BadInput
from tuner.finalists_store import load_drift, load_finalists
from tuner.prodconfig import _write_temp
from tuner.records import FinalistReport, TrialRecord, WorkerDrift
from tuner.store import STUDY_NAME, Store, check_study_name, list_studies


@dataclass
class StudyData:
    name: str
    source: Path  # the study's folder
    records: list[TrialRecord]
    finalists: FinalistReport | None = None
    drifts: list[WorkerDrift] = field(default_factory=list)


def load_study(results_dir: Path, study: str) -> StudyData:
    """One study by name; bad input (with the studies found) when it is not there."""
    store = Store(results_dir, check_study_name(study))
    if not store.path.exists():
        found = ", ".join(list_studies(results_dir)) or "none"
        raise BadInput(f"no study {study!r} in {results_dir} (found: {found})")
    return StudyData(name=study, source=store.dir, records=store.records(),
                     finalists=load_finalists(results_dir, study),
                     drifts=load_drift(results_dir, study))


def resolve_study(spec: str, results_dir: Path) -> StudyData:
    """A study named ``spec`` under ``results_dir``, or the study at a path: its folder or its
    trials.jsonl (so studies from other machines' results folders can be compared)."""
    p = Path(spec)
    if p.name == "trials.jsonl" and p.is_file():
        p = p.parent
    if p.is_dir() and (p / "trials.jsonl").is_file():
        if not STUDY_NAME.match(p.name):
            raise BadInput(f"study folder {spec!r} has a name that is not a study name")
        return load_study(p.parent, p.name)
    if STUDY_NAME.match(spec) and (Path(results_dir) / spec / "trials.jsonl").is_file():
        return load_study(results_dir, spec)
    found = ", ".join(list_studies(results_dir)) or "none"
    raise BadInput(f"no study {spec!r}: not a study in {results_dir} (found: {found}) nor a "
                   "folder holding trials.jsonl")


def studies_to_show(results_dir: Path, study: str | None) -> list[StudyData]:
    """The named study, or every study under ``results_dir``; bad input when there is none."""
    if study:
        return [load_study(results_dir, study)]
    names = list_studies(results_dir)
    if not names:
        raise BadInput(f"no sweep results in {results_dir}; run `tuner sweep --model FILE` first")
    return [load_study(results_dir, n) for n in names]


def check_output(path: Path) -> None:
    """Refuse an output path that is a folder or whose folder is missing, before any work."""
    p = Path(path)
    if p.is_dir():
        raise BadInput(f"cannot write the report to {p}: it is a directory",
                       "give a file name, e.g. -o report.html")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise BadInput(f"cannot write the report to {p}: folder {parent} {what}",
                       "create the folder first or pick another path")


def write_output(path: Path, data: str | bytes) -> None:
    """Write the report whole or not at all."""
    check_output(path)
    p = Path(path)
    blob = data.encode() if isinstance(data, str) else data
    try:
        tmp = _write_temp(p, blob)
        os.replace(tmp, p)
    except OSError as e:
        raise BadInput(f"cannot write the report to {p}: {e.strerror or e}") from None
