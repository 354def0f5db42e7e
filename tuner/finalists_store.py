"""Where a study's finalist decision and its workers' drift sentinels are kept, beside the trial
records: ``<results>/<study>/finalists.json`` (one FinalistReport, replaced atomically) and
``<results>/<study>/drift.jsonl`` (one WorkerDrift per line, appended and fsynced)."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import suppress
from pathlib import Path

from pydantic import ValidationError

from tuner.records import FinalistReport, WorkerDrift

FINALISTS = "finalists.json"
DRIFT = "drift.jsonl"


def load_finalists(results_dir: Path, study: str) -> FinalistReport | None:
    path = Path(results_dir) / study / FINALISTS
    try:
        return FinalistReport.model_validate_json(path.read_bytes())
    except (OSError, ValueError, ValidationError):
        return None


def save_finalists(results_dir: Path, report: FinalistReport) -> Path:
    path = Path(results_dir) / report.study / FINALISTS
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(report.model_dump_json(indent=2).encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def load_drift(results_dir: Path, study: str) -> list[WorkerDrift]:
    path = Path(results_dir) / study / DRIFT
    out: list[WorkerDrift] = []
    try:
        with open(path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # a line torn by a killed writer
                with suppress(ValueError, ValidationError):
                    out.append(WorkerDrift.model_validate(json.loads(raw)))
    except OSError:
        return []
    return out


def append_drift(results_dir: Path, drift: WorkerDrift) -> None:
    path = Path(results_dir) / drift.study / DRIFT
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (drift.model_dump_json() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
