"""The one store of a study's state: optuna's storage (SQLite ``results/optuna.db`` by default,
any optuna storage URL otherwise), shared by every sweep and every host of the study.

- Each finished trial holds its full ``TrialRecord`` as the trial user attribute ``record``
  (JSON text), written in the same critical section that tells the trial's state, before it.
- The environment (machine, GPUs, driver, library, model hash) is the same for most trials of a
  study: it is stored once per distinct environment as the study user attribute
  ``env:<hash>``, and each stored record names its hash; reading re-hydrates the record.
- The finalist decision is the study user attribute ``finalists``; each worker's drift record is
  ``drift:<worker_id>``, so concurrent sweeps never overwrite each other's.

Reading goes through ``open_study`` / ``list_studies`` (the reports, the sweep's decision
phase, the benchmarks, the tests). Only the storage API is used, never SQL. Failures are one
line (tuner/results/storeerrors.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy as sa
from pydantic import ValidationError

from tuner.errors import BadInput
from tuner.results.journal import journal_path
from tuner.results.records import Environment, FinalistReport, TrialRecord, WorkerDrift
from tuner.results.storeerrors import Storage, open_storage, sqlite_path, storage_error

RECORD = "record"  # trial user attr: {"env": <hash> | null, "record": {... no environment}}
ENV_PREFIX = "env:"
FINALISTS = "finalists"
DRIFT_PREFIX = "drift:"
IDENTITY = "tuner_identity"  # study user attr set by the first sweep (tuner/search/planner.py)
T = TypeVar("T")


def default_storage(results_dir: Path) -> str:
    """The storage a sweep uses, and a report reads, when no --storage is given."""
    return f"sqlite:///{(Path(results_dir) / 'optuna.db').resolve()}"


def env_key(env: Environment) -> str:
    return hashlib.sha256(env.model_dump_json().encode()).hexdigest()[:16]


def _guard(url: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (sa.exc.SQLAlchemyError, OSError, optuna.exceptions.OptunaError) as e:
        raise storage_error(e, url) from None


def _exists(url: str) -> bool:
    """False for a SQLite or journal file that is not there: reading must not create one."""
    path = sqlite_path(url) or journal_path(url)
    return path is None or path.exists()


class StudyStore:
    """One study of an opened storage: its records, finalists and drift, read and written."""

    def __init__(self, storage: Storage, study_id: int, name: str,
                 url: str) -> None:
        self.storage, self.study_id, self.name, self.url = storage, study_id, name, url
        self._envs: set[str] = set()  # environments known to be stored

    # -- writing -----------------------------------------------------------------------------
    def put_record(self, trial_id: int, record: TrialRecord) -> None:
        """Store ``record`` with its (still running) trial; its environment once per study."""
        key = None
        if record.environment is not None:
            key = env_key(record.environment)
            if key not in self._envs:
                attrs = self.storage.get_study_user_attrs(self.study_id)
                if ENV_PREFIX + key not in attrs:
                    self._set_study_attr(ENV_PREFIX + key,
                                         record.environment.model_dump(mode="json"))
                self._envs.add(key)
        body = record.model_dump(mode="json", exclude={"environment"})
        self.storage.set_trial_user_attr(trial_id, RECORD, {"env": key, "record": body})

    def save_finalists(self, report: FinalistReport) -> None:
        """The study's finalist decision, replaced whole (one row, one transaction)."""
        _guard(self.url, lambda: self._set_study_attr(FINALISTS, report.model_dump(mode="json")))

    def save_drift(self, drift: WorkerDrift) -> None:
        """One worker's drift record, under its own key."""
        _guard(self.url, lambda: self._set_study_attr(DRIFT_PREFIX + drift.worker_id,
                                                      drift.model_dump(mode="json")))

    def _set_study_attr(self, key: str, value: Any) -> None:
        """Set a study attribute; two sweeps inserting the same key at once: one insert loses
        the race, and writing again updates the row the other made."""
        try:
            self.storage.set_study_user_attr(self.study_id, key, value)
        except (sa.exc.IntegrityError, optuna.exceptions.StorageInternalError):
            self.storage.set_study_user_attr(self.study_id, key, value)

    # -- reading -----------------------------------------------------------------------------
    def records(self) -> list[TrialRecord]:
        """Every stored record, ordered by trial number. A record attribute that does not
        validate (another program's, a damaged one) is skipped, as a malformed line was."""
        def read() -> list[TrialRecord]:
            attrs = self.storage.get_study_user_attrs(self.study_id)
            trials = self.storage.get_all_trials(self.study_id, deepcopy=False)
            out = [r for t in sorted(trials, key=lambda t: t.number)
                   if (r := decode(t.user_attrs.get(RECORD), attrs)) is not None]
            return out
        return _guard(self.url, read)

    def finalists(self) -> FinalistReport | None:
        """The finalist decision, or None. A stored value that is not one is bad input."""
        value = _guard(self.url, lambda: self.storage.get_study_user_attrs(self.study_id)
                       .get(FINALISTS))
        if value is None:
            return None
        try:
            return FinalistReport.model_validate(value)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "the value"
            raise BadInput(f"study {self.name!r} in {self.url}: the stored finalists are not a "
                           f"finalist report: {where}: {first['msg']}",
                           "run the finalist re-measurement again (a sweep of the study)"
                           ) from None

    def drifts(self) -> list[WorkerDrift]:
        """Every worker's drift record, in the order measured; invalid ones skipped."""
        attrs = _guard(self.url, lambda: self.storage.get_study_user_attrs(self.study_id))
        out = []
        for k, v in attrs.items():
            if k.startswith(DRIFT_PREFIX):
                try:
                    out.append(WorkerDrift.model_validate(v))
                except ValidationError:
                    continue
        return sorted(out, key=lambda d: (d.measured_at, d.worker_id))


def decode(value: Any, study_attrs: dict[str, Any]) -> TrialRecord | None:
    """A stored record with its environment put back; None when it is not a record."""
    if not isinstance(value, dict) or not isinstance(value.get("record"), dict):
        return None
    env = study_attrs.get(ENV_PREFIX + str(value.get("env"))) if value.get("env") else None
    try:
        return TrialRecord.model_validate({**value["record"], "environment": env})
    except (ValidationError, TypeError, ValueError):
        return None


def _open_existing(url: str, read_only: bool) -> Storage | None:
    return open_storage(url, read_only=read_only) if _exists(url) else None


def list_studies(url: str, *, read_only: bool = False) -> list[str]:
    """The tuner studies of a storage (those a sweep set its identity on), sorted; [] when the
    storage's SQLite file does not exist. ``read_only``: opened for reading only (a report)."""
    storage = _open_existing(url, read_only)
    if storage is None:
        return []
    studies = _guard(url, storage.get_all_studies)
    return sorted(s.study_name for s in studies if IDENTITY in s.user_attrs)


def open_study(url: str, name: str, *, read_only: bool = False) -> StudyStore | None:
    """The study ``name`` of the storage at ``url``, or None when there is none."""
    storage = _open_existing(url, read_only)
    if storage is None:
        return None
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return None
    except (sa.exc.SQLAlchemyError, OSError, optuna.exceptions.OptunaError) as e:
        raise storage_error(e, url) from None
    return StudyStore(storage, study_id, name, url)


def records_of(url: str, name: str) -> list[TrialRecord]:
    """The records of study ``name`` of the storage at ``url``; [] when there is no such study."""
    store = open_study(url, name)
    return store.records() if store is not None else []


def require_study(url: str, name: str | None = None) -> StudyStore:
    """Study ``name`` (default: the first tuner study) of the storage; bad input when absent."""
    names = list_studies(url)
    pick = name if name is not None else (names[0] if names else None)
    store = open_study(url, pick) if pick is not None else None
    if store is None:
        raise BadInput(f"no study {name or ''!r} in {url} (found: {', '.join(names) or 'none'})")
    return store
