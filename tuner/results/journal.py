"""``--storage journal:PATH``: the study in an optuna journal file (optuna's JournalStorage with
a JournalFileBackend), for several sweep processes on one host without a database server. The
journal holds optuna's studies and trials; who runs which setting (tuner/results/claims.py) needs SQL,
which a journal has none of, so the claims live in a SQLite file beside it, ``PATH.claims.db``:
both are files of one host, shared by its processes through file locks. optuna-dashboard reads
the journal file itself (``optuna-dashboard PATH``).

A torn last line (a full disk, a power loss, a writer killed mid-append) is set aside on open:
optuna's reader skips it, but its writer appends onto it, gluing the next record to the torn one,
and from then on the whole file is refused. So the bytes after the last newline are moved, under
optuna's own journal lock, to ``PATH.torn`` and the journal is cut back to its last whole record,
said in one line on stderr. A record optuna cannot apply (an unknown ``op_code``, a line that is
not JSON) is bad input naming its line, never an AssertionError."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import BinaryIO

import sqlalchemy as sa
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.storages.journal._file import get_lock_file
from sqlalchemy.engine import Engine

from tuner.errors import BadInput

JOURNAL = "journal:"
CLAIMS_SUFFIX = ".claims.db"
TORN_SUFFIX = ".torn"
_NOTED: set[Path] = set()  # journals whose cut last record a report has already named


def journal_path(url: str) -> Path | None:
    """The journal file of a ``journal:PATH`` storage, or None for any other storage."""
    if not url.startswith(JOURNAL):
        return None
    return Path(url[len(JOURNAL):])


def _line_start(f: BinaryIO, end: int) -> int:
    """The offset of the line that ends at ``end`` (exclusive): just after the newline before
    it, or 0; read backwards a block at a time."""
    pos = end
    while pos > 0:
        step = min(65536, pos)
        f.seek(pos - step)
        i = f.read(step).rfind(b"\n")
        if i >= 0:
            return pos - step + i + 1
        pos -= step
    return 0


def _torn_tail(path: Path) -> int | None:
    """The offset where the torn last line of ``path`` begins, or None when it ends whole."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return None
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return None
            return _line_start(f, size)
    except FileNotFoundError:
        return None


def set_aside_torn_line(path: Path) -> int:
    """Move a torn last line of the journal at ``path`` to ``PATH.torn`` (appended, one line
    each time) and cut the journal back to its last newline; the number of bytes moved (0: the
    journal ends whole). Done under optuna's journal lock, so a record another process is
    appending at that moment is waited for, never taken for a torn one."""
    if _torn_tail(path) is None:
        return 0
    with get_lock_file(JournalFileSymlinkLock(str(path))):
        start = _torn_tail(path)  # again, now that no writer is mid-append
        if start is None:
            return 0
        with open(path, "r+b") as f:
            f.seek(start)
            torn = f.read()
            side = path.with_name(path.name + TORN_SUFFIX)
            with open(side, "ab") as s:
                s.write(torn + b"\n")
                s.flush()
                os.fsync(s.fileno())
            f.truncate(start)
            f.flush()
            os.fsync(f.fileno())
    print(f"note: the journal {path} ended in a cut record ({len(torn)} bytes, a write that did "
          f"not finish); it is set aside in {side}, every whole record is kept",
          file=sys.stderr, flush=True)
    return len(torn)


def check_last_line(path: Path) -> None:
    """A whole last line that is not JSON is bad input: optuna's reader skips it without a
    word (it only raises on a bad line that has lines after it), so the next record appended
    would make the whole journal unreadable."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 1))
            if size == 0 or f.read(1) != b"\n":
                return
            start = _line_start(f, size - 1)
            f.seek(start)
            last = f.read(size - start)
            json.loads(last)
    except FileNotFoundError:
        return
    except ValueError:
        with open(path, "rb") as f:
            number = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
        raise BadInput(f"journal {path}: line {number} is not JSON",
                       hint=f"move {path} aside, or remove that line with an editor (the lines "
                            "before it are whole records)") from None


class JournalClaimsStorage(JournalStorage):
    """A journal storage with the SQL engine of its claims file, the way an RDBStorage has the
    engine of its database (``.engine``: what tuner/results/claims.py works on)."""

    def __init__(self, path: Path, *, repair: bool = True) -> None:
        self.path = path
        if repair:
            set_aside_torn_line(path)
        elif _torn_tail(path) is not None and path not in _NOTED:
            _NOTED.add(path)
            print(f"note: the journal {path} ends in a cut record (a write that did not "
                  "finish): read without it; the next sweep sets it aside",
                  file=sys.stderr, flush=True)
        check_last_line(path)
        super().__init__(JournalFileBackend(str(path)))
        self.engine: Engine = sa.create_engine(
            f"sqlite:///{path.absolute()}{CLAIMS_SUFFIX}", connect_args={"timeout": 60})

    def _sync_with_backend(self) -> None:
        """optuna's replay of the records not read yet; a record it cannot apply is bad input
        with its line number (optuna would raise an AssertionError or a KeyError)."""
        done = self._replay_result.log_number_read
        try:
            super()._sync_with_backend()
        except (AssertionError, KeyError, TypeError, ValueError, AttributeError) as e:
            read = self._replay_result.log_number_read
            # a line that does not decode is the one after the last applied; one that does not
            # apply is the last counted
            line = read + 1 if isinstance(e, json.JSONDecodeError) or read == done else read
            what = "is not JSON" if isinstance(e, ValueError) else \
                "is not a journal record optuna can apply (an unknown operation or field)"
            raise BadInput(f"journal {self.path}: line {line} {what}",
                           hint=f"move {self.path} aside, or remove that line with an editor "
                                "(the lines before it are whole records)") from None


def open_journal(url: str, *, repair: bool = True) -> JournalClaimsStorage:
    """The journal of ``url``; ``repair=False`` (a report): a cut last record is left as it is
    (optuna's reader skips it), and a journal file that is not there is not made."""
    path = journal_path(url)
    if path is None or not url[len(JOURNAL):]:
        raise ValueError(f"not a journal storage: {url!r}")
    if not path.parent.is_dir():
        raise BadInput(f"cannot open storage {path}: folder {path.parent} does not exist",
                       hint="create the folder or give another --storage")
    if not repair and not path.is_file():
        raise BadInput(f"storage {path} is not a journal file")
    return JournalClaimsStorage(path, repair=repair)
