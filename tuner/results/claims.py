"""Who runs which trial: a claims table in the study's own storage database, beside optuna's
tables, so that any number of sweeps of one study (one host or many, SQLite or PostgreSQL) share
the grid safely.

A sweep runs a setting only after it inserted that setting's row (study, spec key): the primary
key makes the insert atomic in every SQL database, so two sweeps never run the same setting. The
owner (host, pid, a token) refreshes a heartbeat on its rows from a thread while it runs. Another
sweep takes a row over, or closes the optuna trial behind it, only when that owner is provably
gone: its heartbeat is older than ``stale_s()``, or it ran on this host and its pid is dead. A row
becomes ``done`` once its record is stored; done rows tell every sweep what is finished."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tuner.machine import envvars
from tuner.results.races import is_creation_race


def heartbeat_s() -> float:
    """Seconds between a sweep's heartbeats (TUNER_HEARTBEAT_S, tuner/machine/envvars.py)."""
    return envvars.current().heartbeat_s


def stale_s() -> float:
    """Seconds of silence after which a claim's owner counts as gone (TUNER_STALE_S)."""
    return envvars.current().stale_s


def host() -> str:
    """The name this host's claims carry. A claim of the same name is judged by its pid as well
    as its heartbeat, so machines (or containers with their own pid namespaces) that share a
    hostname must be told apart by TUNER_HOST; the tests also use it to play a second host."""
    return envvars.current().host or socket.gethostname()

CONFIG_PREFIX = "config:"  # rows that let one sweep at a time write a production config

_meta = sa.MetaData()
CLAIMS = sa.Table(
    "tuner_claims", _meta,
    sa.Column("study", sa.String(512), primary_key=True),
    sa.Column("spec_key", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),  # running | done
    sa.Column("owner", sa.String(300), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("heartbeat", sa.Float, nullable=False),  # time.time() of the owner
    sa.Column("trial_number", sa.Integer, nullable=True),
)


@dataclass(frozen=True)
class Claim:
    spec_key: str
    state: str
    owner: str
    host: str
    pid: int
    heartbeat: float
    trial_number: int | None


def pid_alive(pid: int) -> bool:
    """Whether a process of this host with that pid still runs (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def is_stale(c: Claim, now: float | None = None) -> bool:
    """The owner is gone: dead on this host, or silent for longer than stale_s() anywhere."""
    if c.host == host() and not pid_alive(c.pid):
        return True
    return (now or time.time()) - c.heartbeat > stale_s()


class Claims:
    """This process's view of the claims of one study."""

    def __init__(self, engine: Engine, study: str) -> None:
        self.engine = engine
        self.study = study
        self.owner = f"{host()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        _create_table(engine)

    # -- reading -----------------------------------------------------------------------------
    def _row(self, key: str) -> Claim | None:
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(CLAIMS).where(CLAIMS.c.study == self.study,
                                                     CLAIMS.c.spec_key == key)).first()
        return _claim(r) if r else None

    def all(self) -> list[Claim]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(CLAIMS).where(CLAIMS.c.study == self.study)).all()
        return [_claim(r) for r in rows]

    def done_keys(self) -> set[str]:
        return {c.spec_key for c in self.all() if c.state == "done"}

    def others_running(self) -> list[Claim]:
        """Live claims of other sweeps on trials (not the config row)."""
        now = time.time()
        return [c for c in self.all() if c.state == "running" and c.owner != self.owner
                and not c.spec_key.startswith(CONFIG_PREFIX) and not is_stale(c, now)]

    # -- claiming ----------------------------------------------------------------------------
    def claim(self, key: str) -> tuple[bool, Claim | None]:
        """Take ``key`` for this process. Returns (taken, the previous claim if a stale one was
        taken over, or the blocking/done one if not taken)."""
        values = dict(study=self.study, spec_key=key, state="running", owner=self.owner,
                      host=host(), pid=os.getpid(), heartbeat=time.time(), trial_number=None)
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(CLAIMS).values(**values))
            return True, None
        except sa.exc.IntegrityError:
            pass
        old = self._row(key)
        if old is None:  # released between our insert and our read: try once more
            return self.claim(key)
        if old.state != "running" or not is_stale(old):
            return False, old
        with self.engine.begin() as conn:  # compare-and-set on the stale owner's row
            res = conn.execute(sa.update(CLAIMS).where(
                CLAIMS.c.study == self.study, CLAIMS.c.spec_key == key,
                CLAIMS.c.owner == old.owner, CLAIMS.c.heartbeat == old.heartbeat,
                CLAIMS.c.state == "running").values(**values))
        return (res.rowcount == 1), old

    def retake(self, old: Claim) -> bool:
        """Take over a done row (compare-and-set: nobody else retook it meanwhile)."""
        with self.engine.begin() as conn:
            res = conn.execute(sa.update(CLAIMS).where(
                CLAIMS.c.study == self.study, CLAIMS.c.spec_key == old.spec_key,
                CLAIMS.c.owner == old.owner, CLAIMS.c.heartbeat == old.heartbeat,
                CLAIMS.c.state == old.state).values(
                state="running", owner=self.owner, host=host(), pid=os.getpid(),
                heartbeat=time.time()))
        return res.rowcount == 1

    def set_number(self, key: str, number: int) -> None:
        self._update(key, None, trial_number=number)

    def done(self, key: str, owner: str | None = None) -> None:
        """Mark the setting finished (its record is stored); ``owner``: a gone sweep's row."""
        self._update(key, owner, state="done", heartbeat=time.time())

    def release(self, key: str, owner: str | None = None) -> None:
        """Drop a running claim (ours, or a stale one's by its owner) so the setting runs again."""
        with self.engine.begin() as conn:
            conn.execute(sa.delete(CLAIMS).where(
                CLAIMS.c.study == self.study, CLAIMS.c.spec_key == key,
                CLAIMS.c.owner == (owner or self.owner), CLAIMS.c.state == "running"))

    def mine(self) -> list[Claim]:
        return [c for c in self.all() if c.owner == self.owner and c.state == "running"]

    def _update(self, key: str, owner: str | None, **values: object) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.update(CLAIMS).where(
                CLAIMS.c.study == self.study, CLAIMS.c.spec_key == key,
                CLAIMS.c.owner == (owner or self.owner)).values(**values))

    # -- heartbeat ---------------------------------------------------------------------------
    def beat(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.update(CLAIMS).where(
                CLAIMS.c.owner == self.owner, CLAIMS.c.state == "running").values(
                heartbeat=time.time()))

    def start_heartbeat(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return  # one heartbeat per sweep, however often the plan is extended
        def loop() -> None:
            while not self._stop.wait(heartbeat_s()):
                with suppress(sa.exc.SQLAlchemyError):  # a busy database: the next beat
                    self.beat()                         # comes well before stale_s()
        self._thread = threading.Thread(target=loop, name="tuner-heartbeat", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def _claim(r: sa.Row) -> Claim:
    return Claim(r.spec_key, r.state, r.owner, r.host, r.pid, r.heartbeat, r.trial_number)


def _create_table(engine: Engine) -> None:
    """Create the table once; processes creating it together all end up with it. SQLite says
    ``locked`` or ``already exists``; PostgreSQL's concurrent CREATE TABLEs collide on its
    catalog (IntegrityError), find the table made (ProgrammingError) or deadlock. Whatever the
    error, the table existing afterwards is success; a race is tried again, anything else
    raised."""
    for attempt in range(20):
        try:
            _meta.create_all(engine, checkfirst=True)
            return
        except sa.exc.DBAPIError as e:
            if "already exists" in str(e) or _exists(engine):
                return
            if attempt == 19 or not is_creation_race(e):
                raise
            time.sleep(0.1 * (attempt + 1))


def _exists(engine: Engine) -> bool:
    with suppress(sa.exc.SQLAlchemyError):
        return sa.inspect(engine).has_table(CLAIMS.name)
    return False
