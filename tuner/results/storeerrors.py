"""Opening the optuna storage, and what its failures mean to a user: one line, exit 2 (the
storage given is unusable: an unknown URL scheme, a malformed URL, a file that is not a
database, a directory) or 3 (the machine cannot go on: a full disk, a database server that
cannot be reached), each with what to do. Opening is retried when several sweeps create the same
database at once (SQLite file or server database). A server database gets a small connection
pool: one sweep needs at most two connections at once (its main thread and its heartbeat), and a
fleet of sweeps must not exhaust the server's ``max_connections``. ``journal:PATH`` opens an
optuna journal file (several processes on one host; tuner/results/journal.py)."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import optuna
import sqlalchemy as sa

from tuner.errors import BadInput, EnvironmentUnfit, TunerError
from tuner.results.journal import JOURNAL, JournalClaimsStorage, journal_path, open_journal
from tuner.results.races import is_creation_race

RETRIES = 30
URL_HINT = "use sqlite:///PATH, postgresql+psycopg://USER@HOST/DB or journal:PATH"
# Per sweep process: 2 pooled connections (main thread, heartbeat) and a few more in a burst.
SERVER_POOL: dict[str, object] = {"pool_size": 2, "max_overflow": 3, "pool_pre_ping": True,
                                  "pool_recycle": 1800}
CONNECT_TIMEOUT_S = 10


def sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    return Path(url[len("sqlite:///"):])


# An opened study storage: optuna's, with the SQL engine the claims table lives in.
Storage = optuna.storages.RDBStorage | JournalClaimsStorage


# SQLite storages this process opened, by URL and the file's identity: optuna's setup of one
# (schema and version checks, about 0.35 s of CPU) is paid once per file, not per call (a report
# lists the studies, then opens one). A file replaced or written since is opened afresh.
_OPENED: dict[tuple[str, int, int, int, int], Storage] = {}


def _file_key(url: str) -> tuple[str, int, int, int, int] | None:
    path = sqlite_path(url)
    try:
        st = path.stat() if path is not None else None
    except OSError:
        return None
    return (url, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) if st is not None else None


def open_storage(url: str, *, read_only: bool = False) -> Storage:
    """The storage for ``url``, created if new. Races between processes creating the same
    database (``IntegrityError ... alembic_version``, ``database is locked``, ``table already
    exists``, a deadlock between two servers' DDL) are retried; anything else becomes a
    TunerError. ``read_only`` (a report): nothing is written, no schema is made, a SQLite file
    is opened in SQLite's read-only mode and must already be an optuna database, a journal's
    cut last record is left where it is."""
    check_url(url)
    key = _file_key(url)
    if read_only:
        ro_key = None if key is None else ("ro:" + key[0], *key[1:])
        if ro_key is not None and (opened := _OPENED.get(ro_key)) is not None:
            return opened
        storage = _open_read_only(url)
        if ro_key is not None:
            _OPENED[ro_key] = storage
        return storage
    if key is not None and (opened := _OPENED.get(key)) is not None:
        return opened
    for attempt in range(RETRIES):
        try:
            if url.startswith(JOURNAL):
                return open_journal(url)
            _create_whole(url)
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url))
            if (key := _file_key(url)) is not None:
                _OPENED[key] = storage
            return storage
        except Exception as e:  # noqa: BLE001 - every failure is classified below
            if attempt < RETRIES - 1 and is_creation_race(e):
                time.sleep(0.05 * (attempt + 1))
                continue
            raise storage_error(e, url) from None
    raise AssertionError("unreachable")


SQLITE_MAGIC = b"SQLite format 3\x00"


def _create_whole(url: str) -> None:
    """A new SQLite storage appears whole: optuna writes its tables, version row and alembic
    stamp in several transactions, and a report that opened the file between them would have
    to write the rest (refused: "cannot be read without writing to it"). So a file not there
    yet is made beside it under a name of this process and hard-linked into place, which fails
    where another sweep's whole file got there first. A file system without hard links gets
    the file made in place, as before."""
    path = sqlite_path(url)
    if path is None or path.name in ("", ":memory:") or path.exists():
        return
    making = path.with_name(f".{path.name}.making-{os.getpid()}")
    try:
        optuna.storages.RDBStorage(f"sqlite:///{making}",
                                   engine_kwargs=engine_kwargs(url)).engine.dispose()
        try:
            os.link(making, path)
        except FileExistsError:
            pass  # another sweep's file, made whole the same way
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
                raise
    finally:
        making.unlink(missing_ok=True)


def _open_read_only(url: str) -> Storage:
    """``open_storage(url, read_only=True)``."""
    path = sqlite_path(url)
    where = path or journal_path(url) or shown(url)
    try:
        if url.startswith(JOURNAL):
            return open_journal(url, repair=False)
        opened = url
        if path is not None:
            _check_sqlite_file(path)
            opened = f"sqlite:///file:{path.absolute()}?mode=ro&uri=true"
        return optuna.storages.RDBStorage(opened, engine_kwargs=engine_kwargs(opened),
                                          skip_table_creation=True)
    except Exception as e:  # noqa: BLE001 - every failure is classified below
        text = str(getattr(e, "__cause__", None) or e)
        if "no such table" in text:
            raise BadInput(f"storage {where} is not an optuna database (it has no optuna "
                           "tables)", hint="give the --storage or --results a sweep wrote"
                           ) from None
        if "readonly database" in text:  # optuna would write: finish a schema, roll back
            raise BadInput(f"storage {where} cannot be read without writing to it: a sweep "
                           "was stopped while it created or wrote the database",
                           hint="run the sweep again: it completes or rolls back what the "
                                "stopped one left") from None
        raise storage_error(e, url) from None


def _check_sqlite_file(path: Path) -> None:
    """A file a report reads must be a SQLite database: an empty one, or any other file, is
    refused as it is, never given a schema."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as e:
        raise BadInput(f"cannot read storage {path}: {e.strerror or e}") from None
    if not head:
        raise BadInput(f"storage {path} is an empty file, not an optuna database",
                       hint="give the --storage or --results a sweep wrote (a sweep fills "
                            "an empty file)")
    if head != SQLITE_MAGIC:
        raise BadInput(f"storage {path} is not a SQLite database",
                       hint="give the --storage or --results a sweep wrote")


def engine_kwargs(url: str) -> dict[str, object]:
    """SQLAlchemy engine options: a long lock wait for SQLite, a small pool and a bounded
    connect time for a database server."""
    backend = sa.engine.make_url(url).get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": 60}}
    kwargs = dict(SERVER_POOL)
    if backend == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    return kwargs


def shown(url: str) -> str:
    """The URL as a message shows it: without its password."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        return url


def check_url(url: str) -> None:
    path = journal_path(url)
    if path is not None:
        if not url[len(JOURNAL):]:
            raise BadInput(f"--storage {url!r} names no journal file", hint=URL_HINT)
        if path.is_dir():
            raise BadInput(f"storage {path} is a directory, not a journal file",
                           hint="move it aside or give another --storage")
        return
    scheme = url.partition("://")[0]
    if "://" not in url or not scheme:
        raise BadInput(f"--storage {url!r} is not a database URL", hint=URL_HINT)
    try:
        sa.engine.make_url(url).get_dialect()
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError):
        raise BadInput(f"--storage {url!r}: unknown database scheme {scheme!r}",
                       hint=URL_HINT) from None
    except ValueError as e:  # e.g. a port that is not a number
        raise BadInput(f"--storage {shown(url)!r} is a malformed database URL ({e})",
                       hint=URL_HINT) from None
    except ImportError as e:
        raise EnvironmentUnfit(f"--storage {url!r} needs a database driver that is not "
                               f"installed: {e.name or e}") from None
    path = sqlite_path(url)
    if path is not None and path.is_dir():
        raise BadInput(f"storage {path} is a directory, not a database file",
                       hint="move it aside or give another --storage / --results")


def storage_error(e: BaseException, url: str) -> TunerError:
    """The user-facing meaning of a storage failure."""
    if isinstance(e, TunerError):
        return e
    text = str(getattr(e, "orig", None) or e).splitlines()[0] if str(e) else type(e).__name__
    where = sqlite_path(url) or journal_path(url) or shown(url)
    if _disk_full(e):
        return EnvironmentUnfit(f"the disk holding {where} is full",
                                hint="free space, then run the same command to resume")
    if isinstance(e, sa.exc.DatabaseError) and not isinstance(e, sa.exc.OperationalError) or (
            "not a database" in text or "malformed" in text):
        return BadInput(f"storage {where} is damaged or not an optuna database ({text})",
                        hint=f"move {where} aside or give another --storage")
    if isinstance(e, sa.exc.OperationalError):
        if "unable to open" in text or "readonly" in text:
            return BadInput(f"cannot open storage {where}: {text}",
                            hint="check the path and its permissions, or give another --storage")
        if "authentication failed" in text or ("database" in text and "does not exist" in text):
            return BadInput(f"cannot open storage {where}: {text}",
                            hint="check the user, password and database name of the URL (create "
                                 "the database first: createdb NAME)")
        return EnvironmentUnfit(f"storage {where} cannot be used: {text}",
                                hint="check that the database is reachable, then run the same "
                                     "command to resume")
    if isinstance(e, OSError):  # a journal file that cannot be opened or written
        return BadInput(f"cannot open storage {where}: {e.strerror or text}",
                        hint="check the path and its permissions, or give another --storage")
    if isinstance(e, ImportError):
        return EnvironmentUnfit(f"--storage {url!r}: the database driver for "
                                f"{url.partition('://')[0]!r} is not installed",
                                hint="e.g. pip install 'psycopg[binary]' (postgresql+psycopg) "
                                     "or pymysql (mysql+pymysql)")
    if isinstance(e, (ValueError, RuntimeError, sa.exc.SQLAlchemyError)):
        return BadInput(f"storage {where} cannot be used: {text}",
                        hint="move it aside or give another --storage")
    return TunerError(f"storage {where}: {type(e).__name__}: {text}")


def _disk_full(e: BaseException) -> bool:
    stack: list[BaseException | None] = [e]
    seen: set[int] = set()
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno == errno.ENOSPC:
            return True
        if "disk is full" in str(x) or "No space left" in str(x):
            return True
        stack += [x.__cause__, x.__context__, getattr(x, "orig", None)]
    return False
