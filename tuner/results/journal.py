"""``--storage journal:PATH``: the study in an optuna journal file (optuna's JournalStorage with
a JournalFileBackend), for several sweep processes on one host without a database server. The
journal holds optuna's studies and trials; who runs which setting (tuner/results/claims.py) needs SQL,
which a journal has none of, so the claims live in a SQLite file beside it, ``PATH.claims.db``:
both are files of one host, shared by its processes through file locks. optuna-dashboard reads
the journal file itself (``optuna-dashboard PATH``)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.engine import Engine

from tuner.errors import BadInput

JOURNAL = "journal:"
CLAIMS_SUFFIX = ".claims.db"


def journal_path(url: str) -> Path | None:
    """The journal file of a ``journal:PATH`` storage, or None for any other storage."""
    if not url.startswith(JOURNAL):
        return None
    return Path(url[len(JOURNAL):])


class JournalClaimsStorage(JournalStorage):
    """A journal storage with the SQL engine of its claims file, the way an RDBStorage has the
    engine of its database (``.engine``: what tuner/results/claims.py works on)."""

    def __init__(self, path: Path) -> None:
        super().__init__(JournalFileBackend(str(path)))
        self.path = path
        self.engine: Engine = sa.create_engine(
            f"sqlite:///{path.absolute()}{CLAIMS_SUFFIX}", connect_args={"timeout": 60})


def open_journal(url: str) -> JournalClaimsStorage:
    path = journal_path(url)
    if path is None or not url[len(JOURNAL):]:
        raise ValueError(f"not a journal storage: {url!r}")
    if not path.parent.is_dir():
        raise BadInput(f"cannot open storage {path}: folder {path.parent} does not exist",
                       hint="create the folder or give another --storage")
    return JournalClaimsStorage(path)
