"""Study names, a study's folder of logs, and the JSONL export: one ``TrialRecord`` per line.

The study's state lives in optuna's storage (tuner/results/studystore.py). JSONL is only an export
(``tuner report --format jsonl -o FILE``) and the layout of results folders written by older
versions (``<results>/<study>/trials.jsonl`` with ``finalists.json`` and ``drift.jsonl``).
Both stay readable, read-only, so studies from other machines can be compared and old results
reported: a line that is torn (no newline) or not a record is skipped and counted in a note,
a file with no record at all is refused."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from tuner.errors import BadInput, EnvironmentUnfit
from tuner.results.records import FinalistReport, TrialRecord, WorkerDrift

STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# A study holds one GPU model's trials; another GPU's go to the sibling <study>--<gpu>.
GPU_SEP = "--"
TRIALS = "trials.jsonl"  # the file name older versions wrote records to
FINALISTS = "finalists.json"
DRIFT = "drift.jsonl"
M = TypeVar("M", bound=BaseModel)


def check_study_name(name: str) -> str:
    if not STUDY_NAME.match(name):
        raise BadInput(f"study name {name!r} must be letters, digits, '.', '_' or '-'")
    return name


def check_results_dir(results_dir: Path) -> None:
    """Refuse a results path that is a file, before anything is written."""
    p = Path(results_dir)
    if p.exists() and not p.is_dir():
        raise BadInput(f"results path {p} exists and is not a directory")


def study_dir(results_dir: Path, study: str, *, create: bool = False) -> Path:
    """``<results>/<study>``: where the study's worker logs go (its state is in the storage)."""
    check_results_dir(results_dir)
    d = Path(results_dir) / check_study_name(study)
    if create:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BadInput(f"cannot create results directory {d}: {e.strerror}") from None
    return d


def check_disk(folder: Path, need: int = 256 * 1024) -> None:
    """Refuse to go on when the disk holding the study's folder (its worker logs) is full: a
    worker that cannot write its log fails, and that says nothing of its setting. Exit 3; the
    trial held is failed and run again by the next sweep."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < need:
        raise EnvironmentUnfit(f"the disk holding {folder} is full",
                               hint="free space, then run the same command to resume")


def _lines(path: Path, model: type[M]) -> list[M]:
    """Every whole, valid line of ``path`` as ``model``; [] when the file is absent. Lines that
    are not one (hand-edited junk, a cut last line) are skipped and counted in one note on
    stderr; a file with such lines and no valid one (``/etc/passwd``, a binary file) is bad
    input, never an empty study."""
    out: list[M] = []
    bad: list[int] = []
    torn = False
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return out
    except OSError as e:
        raise BadInput(f"cannot read {path}: {e.strerror}") from None
    with f:
        for number, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                torn = True  # torn last line: a writer was killed mid-append
                break
            try:
                out.append(model.model_validate(json.loads(raw)))
            except (ValueError, ValidationError):
                bad.append(number)
    what = "trial record" if model is TrialRecord else "record"
    if (bad or torn) and not out:
        first = bad[0] if bad else 1
        raise BadInput(f"{path} holds no tuner {what} (line {first} is not one)",
                       hint="give a JSONL export written by `tuner report --format jsonl -o`")
    if bad or torn:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        parts = ([f"{len(bad)} line(s) that are not a tuner {what} (line {shown})"]
                 if bad else []) + (["a cut last line"] if torn else [])
        print(f"note: {path}: skipped {' and '.join(parts)}; read {len(out)} record(s)",
              file=sys.stderr, flush=True)
    return out


def read_jsonl(path: Path) -> list[TrialRecord]:
    """The records of a JSONL export, once each (the first of any repeated trial_id)."""
    seen: set[str] = set()
    out = []
    for rec in _lines(Path(path), TrialRecord):
        if rec.trial_id not in seen:
            seen.add(rec.trial_id)
            out.append(rec)
    return out


def export_jsonl(records: list[TrialRecord]) -> str:
    """The export: every record, one JSON object per line."""
    return "".join(r.model_dump_json() + "\n" for r in records)


def legacy_records(results_dir: Path, study: str) -> list[TrialRecord]:
    """The records an older version kept in ``<results>/<study>/trials.jsonl``, or []."""
    return read_jsonl(Path(results_dir) / study / TRIALS)


def with_legacy(stored: list[TrialRecord], legacy: list[TrialRecord]) -> list[TrialRecord]:
    """The storage's records, plus an older version's trials.jsonl records of trials that hold
    no record in the storage (a study begun before records moved there), by trial number."""
    numbers = {r.number for r in stored}
    return sorted(stored + [r for r in legacy if r.number not in numbers], key=lambda r: r.number)


def legacy_finalists(folder: Path) -> FinalistReport | None:
    """An old results folder's finalists.json, or None; a file that is not one is bad input."""
    path = Path(folder) / FINALISTS
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise BadInput(f"cannot read {path}: {e.strerror}") from None
    try:
        return FinalistReport.model_validate_json(text)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "the file"
        raise BadInput(f"{path} is not a finalist report: {where}: {first['msg']}",
                       "delete it or run the finalist re-measurement again") from None


def legacy_drifts(folder: Path) -> list[WorkerDrift]:
    """An old results folder's drift.jsonl, whole valid lines only."""
    return _lines(Path(folder) / DRIFT, WorkerDrift)
