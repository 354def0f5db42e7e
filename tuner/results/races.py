"""Which database errors mean "another process created the same thing at the same moment":
the one classifier for optuna's tables (``storeerrors.open_storage``) and the claims table
(``claims``), both retried on such an error.

SQLite says ``database is locked`` or ``table ... already exists``. PostgreSQL's concurrent
CREATE TABLEs collide on its catalog (an IntegrityError on ``pg_type_typname_nsp_index`` or
``pg_class_relname_nsp_index``: "duplicate key value"), find the table made (``already
exists``), or deadlock; two alembic migrations of optuna's schema collide on
``alembic_version``."""

from __future__ import annotations

import sqlalchemy as sa

_INTEGRITY = ("alembic_version", "pg_type_typname_nsp_index", "pg_class_relname_nsp_index",
              "duplicate key")
_OPERATIONAL = ("locked", "already exists", "deadlock detected")


def is_creation_race(e: BaseException) -> bool:
    text = str(e)
    if isinstance(e, sa.exc.IntegrityError):
        return any(w in text for w in _INTEGRITY)
    return isinstance(e, (sa.exc.OperationalError, sa.exc.ProgrammingError)) and any(
        w in text for w in _OPERATIONAL)
