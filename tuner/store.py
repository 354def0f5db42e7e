"""The results store: one JSON line per finished trial under ``<results>/<study>/trials.jsonl``,
appended and fsynced as each trial ends, so nothing is lost if the sweep dies. A reader (a
report run while a sweep writes) sees only whole lines; a line torn by a killed writer is
dropped on the next append and never read as a record."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

from pydantic import ValidationError

from tuner.errors import BadInput, EnvironmentUnfit
from tuner.records import TrialRecord

STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_study_name(name: str) -> str:
    if not STUDY_NAME.match(name):
        raise BadInput(f"study name {name!r} must be letters, digits, '.', '_' or '-'")
    return name


class Store:
    def __init__(self, results_dir: Path, study: str) -> None:
        self.results_dir = Path(results_dir)
        self.study = check_study_name(study)
        self.dir = self.results_dir / study
        self.path = self.dir / "trials.jsonl"

    def check(self) -> None:
        """Refuse a results path that is a file, before anything is written."""
        if self.results_dir.exists() and not self.results_dir.is_dir():
            raise BadInput(f"results path {self.results_dir} exists and is not a directory")

    def ensure(self) -> None:
        self.check()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BadInput(f"cannot create results directory {self.dir}: {e.strerror}") from None

    def _repair_torn_tail(self) -> None:
        """Cut a last line without its newline: a record half-written by a killed process."""
        try:
            with open(self.path, "rb+") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                if size == 0:
                    return
                f.seek(size - 1)
                if f.read(1) == b"\n":
                    return
                pos = size
                while pos > 0:
                    step = min(65536, pos)
                    f.seek(pos - step)
                    chunk = f.read(step)
                    nl = chunk.rfind(b"\n")
                    if nl >= 0:
                        f.truncate(pos - step + nl + 1)
                        break
                    pos -= step
                else:
                    f.truncate(0)
                f.flush()
                os.fsync(f.fileno())
        except FileNotFoundError:
            return

    def append(self, record: TrialRecord) -> None:
        """Append one record. A write that fails (a full disk) leaves at most a torn line,
        cut on the next append; the trial is then run again."""
        self.ensure()
        line = (record.model_dump_json() + "\n").encode()
        try:
            self._repair_torn_tail()
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                if os.write(fd, line) != len(line):
                    raise OSError(errno.ENOSPC, "short write")
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            hint = ("free space, then run the same command to resume"
                    if e.errno in (errno.ENOSPC, errno.EDQUOT) else None)
            raise EnvironmentUnfit(f"cannot store a trial record in {self.path}: "
                                   f"{e.strerror or e}", hint=hint) from None

    def records(self) -> list[TrialRecord]:
        """Every whole record, once each (the first of any repeated trial_id)."""
        if not self.path.exists():
            return []
        out: list[TrialRecord] = []
        seen: set[str] = set()
        with open(self.path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # torn last line: a writer is mid-append or was killed
                try:
                    rec = TrialRecord.model_validate(json.loads(raw))
                except (ValueError, ValidationError):
                    continue
                if rec.trial_id not in seen:
                    seen.add(rec.trial_id)
                    out.append(rec)
        return out


def list_studies(results_dir: Path) -> list[str]:
    root = Path(results_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "trials.jsonl").is_file())
