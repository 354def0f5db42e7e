"""Where the finalist re-measurement and the drift sentinel keep their records, beside the
trials of a study:

- ``results/<study>/finalists.json``: one ``FinalistReport``, replaced atomically (temp file,
  fsync, rename) so a report run meanwhile reads the old decision or the new one, never half.
- ``results/<study>/drift.jsonl``: one ``WorkerDrift`` per line, appended and fsynced as each
  worker ends, read like the trials store (whole lines only, a torn tail skipped).

Both are optional: a study without them loads as ``None`` / ``[]``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import ValidationError

from tuner.errors import BadInput
from tuner.prodconfig import _fsync_dir, _write_temp
from tuner.records import FinalistReport, WorkerDrift
from tuner.store import Store

FINALISTS = "finalists.json"
DRIFT = "drift.jsonl"


def finalists_path(results_dir: Path, study: str) -> Path:
    return Store(results_dir, study).dir / FINALISTS


def drift_path(results_dir: Path, study: str) -> Path:
    return Store(results_dir, study).dir / DRIFT


def save_finalists(results_dir: Path, report: FinalistReport) -> Path:
    """Write ``report`` as the study's finalists.json, atomically; returns the path."""
    store = Store(results_dir, report.study)
    store.ensure()
    target = store.dir / FINALISTS
    tmp = _write_temp(target, (report.model_dump_json(indent=2) + "\n").encode())
    try:
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(store.dir)
    return target


def load_finalists(results_dir: Path, study: str) -> FinalistReport | None:
    """The study's finalist report, or None when there is none. A file that is not a valid
    report is bad input (one line naming the file), not a silent None."""
    path = finalists_path(results_dir, study)
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


def append_drift(results_dir: Path, drift: WorkerDrift) -> Path:
    """Append one worker's drift record to the study's drift.jsonl and fsync it."""
    store = Store(results_dir, drift.study)
    store.ensure()
    path = store.dir / DRIFT
    line = (drift.model_dump_json() + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        if os.lseek(fd, 0, os.SEEK_END) > 0 and _last_byte(path) != b"\n":
            os.write(fd, b"\n")  # end a torn line so this record starts on its own
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def load_drift(results_dir: Path, study: str) -> list[WorkerDrift]:
    """Every whole drift record of the study, in the order written; [] when there are none."""
    path = drift_path(results_dir, study)
    out: list[WorkerDrift] = []
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return out
    except OSError as e:
        raise BadInput(f"cannot read {path}: {e.strerror}") from None
    with f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # a writer is mid-append or was killed
            try:
                out.append(WorkerDrift.model_validate(json.loads(raw)))
            except (ValueError, ValidationError):
                continue
    return out
