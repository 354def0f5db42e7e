"""The suite's `tuner` commands, each in a process of its own, forked from one that has already
imported the command line (a fork server, as multiprocessing's "forkserver" start method is).

Why: a `tuner` process spends about 1.0-1.4 CPU-seconds importing optuna, SQLAlchemy, numpy,
pydantic and rich before it reads its arguments, and the suite runs about 250 of them on two
cores. Forked from a server that did those imports once, each command starts at its arguments.

What the child does is what ``python -m tuner ARGS`` does: it takes the test's working folder,
environment, ``sys.argv`` and ``sys.path[0]`` (that folder), runs ``tuner/__main__.py`` as
``__main__`` (so that the sweep's spawned workers import it as ``__mp_main__``, as they do under
``python -m tuner``), writes to its own stdout and stderr files, and exits as the interpreter
does: the code of ``SystemExit``, a traceback and 1 for an uncaught exception, non-daemon threads
joined and ``atexit`` handlers run; killed by signal N, its return code is -N, as subprocess's.

What differs: the modules were imported before the command's environment was set, so a module
that read the environment when imported would see the server's (tuner reads every variable when
it uses it; tests/test_cli_fork.py runs commands both ways and compares them). Commands that
must start as a new interpreter (another user, interpreter flags, import checks, a sweep that a
test interrupts as a shell's Ctrl-C does) are started as ``python -m tuner`` instead.

Started lazily, one server per test process; it ends when that process closes its pipe."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Everything a command imports as it works (optuna loads its database modules and alembic when
# it first opens a storage, multiprocessing its spawning modules when a sweep starts a worker),
# except pandas and matplotlib: the HTML report alone needs them, and a test checks that the
# terminal report never imports pandas.
PRELOAD = ("tuner.cli", "tuner.sweep.run", "tuner.sweep.multigpu", "tuner.reports.render",
           "tuner.reports.reporting", "tuner.reports.views", "tuner.reports.overview",
           "tuner.reports.compare", "tuner.reports.exporters", "tuner.reports.roofline",
           "tuner.deploy.verify", "tuner.deploy.servedfinal", "tuner.worker.envdoctor",
           "tuner.evidence.doctor", "tuner.machine.writable", "tuner.builds.buildmake",
           "optuna.storages._rdb.models", "alembic.command", "alembic.config",
           "alembic.migration", "alembic.script", "multiprocessing.connection",
           "multiprocessing.popen_spawn_posix", "multiprocessing.resource_tracker",
           "multiprocessing.spawn", "runpy")


# -- the server (python -m tests.cli_fork READ_FD WRITE_FD) -------------------------------------
def _serve(requests: int, replies: int) -> None:
    """Fork a child per request line and answer {"pid"} at once; answer {"ended", "returncode"}
    when a child ends. Several children may run at once (sweeps that race on one study)."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    buffer, live = b"", 0
    while True:
        # While children run, look for ended ones every 20 ms; else sleep until a request.
        if select.select([requests], [], [], 0.02 if live else None)[0]:
            chunk = os.read(requests, 65536)
            if not chunk:
                return  # the test process closed its end
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    os.close(requests)
                    os.close(replies)
                    _child(json.loads(line))  # never returns
                live += 1
                os.write(replies, json.dumps({"pid": pid}).encode() + b"\n")
        while live:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            live -= 1
            code = os.waitstatus_to_exitcode(status)
            os.write(replies, json.dumps({"ended": pid, "returncode": code}).encode() + b"\n")


def _child(req: dict) -> None:
    """Become `python -m tuner ARGS` in the request's folder and environment; never returns."""
    import atexit
    import runpy
    import traceback

    code = 1
    try:
        if req.get("new_session"):
            os.setsid()  # as Popen(start_new_session=True): os.killpg(pid) reaches its workers
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)  # as for stdout and stderr: only fds 0-2 are left, as under exec
        for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)
        sys.path[0] = os.getcwd()
        sys.argv = ["-m", *req["args"]]
        try:
            runpy.run_module("tuner", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught one
            traceback.print_exc()
            code = 1
        threading._shutdown()  # type: ignore[attr-defined]  # non-daemon threads, as at exit
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with suppress(Exception):  # a closed stream has nothing left to write
                stream.flush()
        os._exit(code & 0xFF)


# -- the client ---------------------------------------------------------------------------------
class _Server:
    def __init__(self, env: dict[str, str]) -> None:
        """``env``: the environment the server imports the command line in (the suite's own,
        as every command gets it before a test adds to it)."""
        req_r, self._req_w = os.pipe()
        self._rep_r, rep_w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cli_fork", str(req_r), str(rep_w)],
            pass_fds=(req_r, rep_w), env=env, cwd=REPO, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL)
        os.close(req_r)
        os.close(rep_w)
        self._buffer = b""
        self.ended: dict[int, int] = {}  # pid -> return code, as the server reported them
        self._lock = threading.Lock()

    def _message(self, deadline: float | None) -> dict | None:
        while b"\n" not in self._buffer:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._rep_r], [], [], wait)[0]:
                return None
            chunk = os.read(self._rep_r, 65536)
            if not chunk:
                raise RuntimeError(f"the tuner fork server ended (exit {self.proc.wait()})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict = json.loads(line)
        if "ended" in message:
            self.ended[message["ended"]] = message["returncode"]
        return message

    def start(self, request: dict) -> int:
        with self._lock:
            os.write(self._req_w, json.dumps(request).encode() + b"\n")
            while True:
                message = self._message(None)
                if message is not None and "pid" in message:
                    return int(message["pid"])

    def wait(self, pid: int, timeout: float | None) -> int | None:
        """The child's return code, or None if it still runs after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while pid not in self.ended:
                if self._message(deadline) is None:
                    return None
            return self.ended.pop(pid)


class Forked:
    """One forked `tuner` command, used as a subprocess.Popen with stdout and stderr pipes and
    text=True is: pid, poll, wait, communicate, send_signal, kill, returncode."""

    def __init__(self, server: _Server, args: list[str], cwd: str, env: dict[str, str],
                 new_session: bool = False) -> None:
        self.args = ["tuner", *args]
        self._server = server
        self._tmp = tempfile.TemporaryDirectory(prefix="tuner-cli-")
        self._out, self._err = Path(self._tmp.name) / "stdout", Path(self._tmp.name) / "stderr"
        self.pid = server.start({"args": args, "cwd": cwd, "env": env, "new_session": new_session,
                                 "stdout": str(self._out), "stderr": str(self._err)})
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            code = self._server.wait(self.pid, timeout)
            if code is None:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            self.returncode = code
        return self.returncode

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._server.wait(self.pid, 0)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        out, err = _read(self._out), _read(self._err)
        self._tmp.cleanup()
        return out, err

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _read(path: Path) -> str:
    """A file the way subprocess.run(text=True) reads a pipe: locale encoding, newlines
    translated."""
    try:
        with open(path, encoding=None, newline=None) as f:
            return f.read()
    except FileNotFoundError:
        return ""


_SERVER: dict[int, _Server] = {}
_LOCK = threading.Lock()


def start(args: list[str], cwd: str, env: dict[str, str], base_env: dict[str, str],
          new_session: bool = False) -> Forked:
    """``tuner ARGS`` forked in ``cwd`` with ``env`` (in a session of its own with
    ``new_session``), running while the caller goes on. ``base_env`` starts this test
    process's server the first time."""
    with _LOCK:
        server = _SERVER.get(os.getpid())
        if server is None or server.proc.poll() is not None:
            server = _SERVER[os.getpid()] = _Server(base_env)
    return Forked(server, args, cwd, env, new_session)


def run(args: list[str], cwd: str, env: dict[str, str], timeout: float,
        base_env: dict[str, str]) -> subprocess.CompletedProcess:
    """``tuner ARGS`` forked, waited for: the fields subprocess.run gives with
    capture_output=True and text=True; past ``timeout`` the command is killed and
    TimeoutExpired raised, as subprocess.run does."""
    proc = start(args, cwd, env, base_env)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(proc.args, timeout, out, err) from None
    out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.wait(), out, err)


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
