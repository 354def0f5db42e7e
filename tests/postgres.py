"""A private PostgreSQL server for the test session: initdb into a temporary folder, listening on
127.0.0.1 at a free port only (no unix socket, so no clash with a system server), trust
authentication, started with pg_ctl and stopped at the end. Root cannot run postgres: as root,
initdb and pg_ctl run as the ``postgres`` system user (made by Debian's package) on a folder it
owns. No PostgreSQL binaries: the fixture fails and says how to install them (CI installs them in
.ci/run; these tests must run there, never skip). Each test gets its own database."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.server_run import free_port

INSTALL = "run .ci/run, or apt-get install -y postgresql (Debian)"
_db_numbers = itertools.count()


def pg_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: pg_config's, else the newest Debian version's."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(Path(out.stdout.strip()))
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = [p for p in debian.iterdir() if p.name.isdigit()]
        candidates += [p / "bin" for p in sorted(versions, key=lambda p: -int(p.name))]
    for initdb in (shutil.which("initdb"),):
        if initdb:
            candidates.append(Path(initdb).resolve().parent)
    return next((c for c in candidates if (c / "initdb").is_file() and (c / "pg_ctl").is_file()),
                None)


@dataclass
class PgServer:
    port: int
    user: str = "postgres"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(_db_numbers)}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _as_owner(cmd: list[str]) -> list[str]:
    """Commands run as the postgres system user when we are root (postgres refuses root)."""
    if os.getuid() != 0:
        return cmd
    if shutil.which("runuser") is None:
        pytest.fail("running as root needs runuser to start PostgreSQL as the postgres user")
    return ["runuser", "-u", "postgres", "--", *cmd]


def _run(cmd: list[str], what: str) -> None:
    out = subprocess.run(_as_owner(cmd), capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        pytest.fail(f"{what} failed ({out.returncode}): {out.stdout[-1500:]}{out.stderr[-1500:]}")


def start_server(root: Path, bindir: Path) -> PgServer:
    data, log = root / "data", root / "server.log"
    _run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
          "--no-locale", "--no-sync"], "initdb")
    for _ in range(5):  # a free port can be taken by another process before we bind it
        port = free_port()
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=100")
        out = subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log),
                                        "-o", options, "-w", "-t", "60", "start"]),
                             capture_output=True, text=True, timeout=120)
        if out.returncode == 0:
            return PgServer(port)
    tail = log.read_text()[-2000:] if log.exists() else ""
    pytest.fail(f"PostgreSQL did not start: {out.stdout[-1000:]}{out.stderr[-1000:]}\n{tail}")


def stop_server(root: Path, bindir: Path) -> None:
    subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "fast",
                              "-w", "stop"]), capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    bindir = pg_bindir()
    if bindir is None:
        pytest.fail(f"no PostgreSQL server binaries (initdb, pg_ctl) found: {INSTALL}")
    root = Path(tempfile.mkdtemp(prefix="tuner-pg-"))
    if os.getuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    try:
        server = start_server(root, bindir)
        try:
            yield server
        finally:
            stop_server(root, bindir)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_server: PgServer) -> str:
    """A fresh database of the session's server, for one test."""
    return postgres_server.create_database()
