"""The one classifier of creation races (tuner/results/races.py), shared by the storage and the
claims table: what is retried, and what is not."""

from __future__ import annotations

import sqlalchemy as sa

from tuner.results.races import is_creation_race


def err(kind: type[sa.exc.DBAPIError], text: str) -> sa.exc.DBAPIError:
    return kind("CREATE TABLE tuner_claims", {}, Exception(text))


def test_races_of_sqlite_and_postgresql_are_retried() -> None:
    assert is_creation_race(err(sa.exc.OperationalError, "database is locked"))
    assert is_creation_race(err(sa.exc.OperationalError, "table tuner_claims already exists"))
    assert is_creation_race(err(sa.exc.ProgrammingError, 'relation "studies" already exists'))
    assert is_creation_race(err(sa.exc.OperationalError, "deadlock detected"))
    assert is_creation_race(err(sa.exc.IntegrityError, 'duplicate key value violates unique '
                                'constraint "pg_type_typname_nsp_index"'))
    assert is_creation_race(err(sa.exc.IntegrityError, "UNIQUE constraint failed: "
                                "alembic_version.version_num"))


def test_other_errors_are_not_races() -> None:
    assert not is_creation_race(err(sa.exc.OperationalError, "disk I/O error"))
    assert not is_creation_race(err(sa.exc.OperationalError, "connection refused"))
    assert not is_creation_race(err(sa.exc.IntegrityError, "NOT NULL constraint failed: "
                                    "trials.study_id"))
    assert not is_creation_race(err(sa.exc.DatabaseError, "file is not a database"))
    assert not is_creation_race(ValueError("already exists"))
