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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from tuner.errors import BadInput, EnvironmentUnfit
from tuner.results.records import FinalistReport, TrialRecord, WorkerDrift

STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# A study holds one GPU model's trials; another GPU's go to the sibling <study>--<gpu>.
GPU_SEP = "--"
TRIALS = "trials.jsonl"  # the file name older versions wrote records to
FINALISTS = "finalists.json"
DRIFT = "drift.jsonl"
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def check_study_name(name: str) -> str:
    if not STUDY_NAME.match(name):
        shown = repr(name) if len(name) <= 60 else f"{name[:60]!r}... ({len(name)} characters)"
        raise BadInput(f"study name {shown} must be 1 to 100 characters: letters, digits, "
                       "'.', '_' or '-', starting with a letter or digit")
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
    """Every whole, valid line of ``path`` as ``model`` (see _parsed)."""
    what = "trial record" if model is TrialRecord else "record"
    return _parsed(path, model.model_validate, what)


def _parsed(path: Path, parse: Callable[[Any], T], what: str) -> list[T]:
    """Every whole line of ``path`` that ``parse`` takes; [] when the file is absent. Lines
    that are not one (hand-edited junk, a cut last line) are skipped and counted in one note on
    stderr; a file with such lines and no valid one (``/etc/passwd``, a binary file) is bad
    input, never an empty study."""
    out: list[T] = []
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
                out.append(parse(json.loads(raw)))
            except (ValueError, ValidationError):
                bad.append(number)
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
    return read_export(path)[0]


# Lines of an export that are not trial records: one key naming what the line holds.
FINALISTS_LINE = "finalist_report"
DRIFT_LINE = "worker_drift"


def export_jsonl(records: list[TrialRecord], finalists: FinalistReport | None = None,
                 drifts: list[WorkerDrift] | None = None) -> str:
    """The export: every record, one JSON object per line, then what the study's decision
    rests on besides them: its finalist report (``{"finalist_report": ...}``, intervals and
    confirmation included) and each worker's drift (``{"worker_drift": ...}``). The records
    carry their clocks and environment. A reader of records only skips the other lines."""
    out = [r.model_dump_json() + "\n" for r in records]
    if finalists is not None:
        out.append(f'{{"{FINALISTS_LINE}": {finalists.model_dump_json()}}}\n')
    out += [f'{{"{DRIFT_LINE}": {d.model_dump_json()}}}\n' for d in drifts or []]
    return "".join(out)


def read_export(path: Path) -> tuple[list[TrialRecord], FinalistReport | None,
                                     list[WorkerDrift]]:
    """A JSONL export read back in one pass: its records (once each, the first of any repeated
    trial_id), and the finalist report and drift records of their study (an export of several
    studies is read as its first record's). A line that is none of these is counted once."""
    items = _parsed(Path(path), _export_item, "trial record")
    records: list[TrialRecord] = []
    seen: set[str] = set()
    for item in items:
        if isinstance(item, TrialRecord) and item.trial_id not in seen:
            seen.add(item.trial_id)
            records.append(item)
    study = records[0].study if records else None
    finalists: FinalistReport | None = None
    drifts: list[WorkerDrift] = []
    for item in items:
        if isinstance(item, _ExportLine):
            if item.finalist_report is not None and study in (None, item.finalist_report.study):
                finalists = item.finalist_report
            if item.worker_drift is not None and study in (None, item.worker_drift.study):
                drifts.append(item.worker_drift)
    return records, finalists, drifts


class _ExportLine(BaseModel):
    """An export line that is not a record."""

    model_config = ConfigDict(extra="forbid")

    finalist_report: FinalistReport | None = None
    worker_drift: WorkerDrift | None = None


def _export_item(data: Any) -> TrialRecord | _ExportLine:
    """One export line: a ``{"finalist_report": ...}`` or ``{"worker_drift": ...}`` line, else
    a trial record (ValueError or ValidationError when it is neither)."""
    if isinstance(data, dict) and len(data) == 1 and next(iter(data)) in (FINALISTS_LINE,
                                                                            DRIFT_LINE):
        return _ExportLine.model_validate(data)
    return TrialRecord.model_validate(data)


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
