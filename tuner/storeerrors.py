"""Opening the optuna storage, and what its failures mean to a user: one line, exit 2 (the
storage given is unusable: an unknown URL scheme, a file that is not a database, a directory)
or 3 (the machine cannot go on: a full disk, a database that cannot be reached), each with what
to do. Opening is retried when several sweeps create the same SQLite file at once."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import optuna
import sqlalchemy as sa

from tuner.errors import BadInput, EnvironmentUnfit, TunerError

RETRIES = 30


def sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    return Path(url[len("sqlite:///"):])


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage for ``url``, created if new. Races between processes creating the same
    database (``IntegrityError ... alembic_version``, ``database is locked``, ``table already
    exists``) are retried; anything else becomes a TunerError."""
    check_url(url)
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(RETRIES):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except Exception as e:  # noqa: BLE001 - every failure is classified below
            if attempt < RETRIES - 1 and _is_race(e):
                time.sleep(0.05 * (attempt + 1))
                continue
            raise storage_error(e, url) from None
    raise AssertionError("unreachable")


def check_url(url: str) -> None:
    scheme = url.partition("://")[0]
    if "://" not in url or not scheme:
        raise BadInput(f"--storage {url!r} is not a database URL",
                       hint="use sqlite:///PATH or postgresql://USER@HOST/DB")
    try:
        sa.engine.make_url(url).get_dialect()
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError):
        raise BadInput(f"--storage {url!r}: unknown database scheme {scheme!r}",
                       hint="use sqlite:///PATH or postgresql://USER@HOST/DB") from None
    except ImportError as e:
        raise EnvironmentUnfit(f"--storage {url!r} needs a database driver that is not "
                               f"installed: {e.name or e}") from None
    path = sqlite_path(url)
    if path is not None and path.is_dir():
        raise BadInput(f"storage {path} is a directory, not a database file",
                       hint="move it aside or give another --storage / --results")


def _is_race(e: BaseException) -> bool:
    text = str(e)
    return (isinstance(e, sa.exc.IntegrityError) and "alembic_version" in text) or (
        isinstance(e, sa.exc.OperationalError) and ("locked" in text or "already exists" in text))


def storage_error(e: BaseException, url: str) -> TunerError:
    """The user-facing meaning of a storage failure."""
    if isinstance(e, TunerError):
        return e
    text = str(getattr(e, "orig", None) or e).splitlines()[0] if str(e) else type(e).__name__
    where = sqlite_path(url) or url
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
        return EnvironmentUnfit(f"storage {where} cannot be used: {text}",
                                hint="check that the database is reachable, then run the same "
                                     "command to resume")
    if isinstance(e, ImportError):
        return EnvironmentUnfit(f"--storage {url!r}: the database driver for "
                                f"{url.partition('://')[0]!r} is not installed",
                                hint="e.g. pip install psycopg2-binary (postgresql) or pymysql "
                                     "(mysql+pymysql)")
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
