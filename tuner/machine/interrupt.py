"""Ending a sweep on a signal: SIGINT (Ctrl-C) and SIGTERM stop the sweep where it is, the sweep
hands back the trial it was running (run again next time; finished ones are stored), and the CLI
prints one line and exits 128 + the signal number (130, 143). Workers ignore SIGINT (a Ctrl-C
reaches the whole process group): the parent kills them, so no worker prints a traceback."""

from __future__ import annotations

import _thread
import logging  # noqa: F401  (its fork hooks first: ours must enclose them, see below)
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

MESSAGE = "interrupted: run the same command to resume"
RESEND_AFTER_S = 0.01  # a signal held during a fork's hooks is sent again this much later


class Interrupted(BaseException):
    """A termination signal, raised in the main thread like KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


_critical = 0  # nesting depth of storage operations in progress (main thread)
_forking = 0  # forks in progress (any thread) whose Python fork hooks are running
_pending: list[int] = []  # a signal that came during one of those, raised when it ends


@contextmanager
def critical() -> Iterator[None]:
    """A storage operation that a signal must not cut in half (a SQLAlchemy checkout or commit
    interrupted midway can leave the pool or a claim half done, and the hand-back then hung).
    Inside ``terminable``, SIGINT and SIGTERM that arrive here are raised when it ends."""
    global _critical
    _critical += 1
    try:
        yield
    finally:
        _critical -= 1
        if _critical == 0 and _pending:
            raise _raise_for(_pending.pop())


def end_interrupted(e: BaseException) -> NoReturn:
    """How a command ends on a signal it caught (Ctrl-C's KeyboardInterrupt or click's Abort:
    130; Interrupted: 128 + its signal): one line on stderr, that status.

    CPython notes a KeyboardInterrupt that leaves code run from a string (``exec(str)``:
    dataclasses, namedtuple and other imports make such code) in a process-wide flag, and
    ``python -m`` then ends the process by SIGINT (status -2) whatever the exit code asked,
    even though the interrupt was caught further up. Running code from a string again clears
    the flag (CPython's pythonrun.c resets it before each such run); a Ctrl-C landing in one of
    those strings made ``python -m tuner verify`` exit -2 instead of 130 now and then."""
    exec("")
    sys.stderr.write(MESSAGE + "\n")
    sys.stderr.flush()
    sys.exit(e.exit_code if isinstance(e, Interrupted) else 130)


def _raise_for(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Interrupted(signum)


def _on_signal(signum: int, _frame: object) -> None:
    """Raise the signal's exception, unless a storage operation or a fork is in progress: then
    it waits for that to end."""
    if _critical or _forking:
        _pending[:] = [signum]
        return
    raise _raise_for(signum)


# A fork with Python fork hooks (subprocess with preexec_fn, which tuner's children use to die
# with it) runs logging's hooks in the parent; an exception raised there is printed ("Exception
# ignored in: <function _releaseLock>") and dropped: a SIGTERM that landed in that window was
# lost and `tuner verify` ran on to its end (exit 3, not 143). Ours are registered after
# logging's, so they enclose them (before-hooks run last-registered first, after-hooks in
# order): a signal that comes between them waits, and is sent again once the fork is done.
def _before_fork() -> None:
    global _forking
    _forking += 1


def _after_fork_in_parent() -> None:
    global _forking
    _forking -= 1
    if not _forking and not _critical and _pending:
        # Sent from another thread a moment later: sent from here, its handler would run in
        # this hook at once (pthread_kill checks for signals on return) and be dropped again.
        _thread.start_new_thread(_send_later, (threading.main_thread().ident, _pending.pop()))


def _send_later(thread_id: int | None, signum: int) -> None:
    time.sleep(RESEND_AFTER_S)
    signal.pthread_kill(thread_id or 0, signum)


def _after_fork_in_child() -> None:
    global _forking
    _forking = 0
    _pending.clear()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


def raise_on_sigterm() -> None:
    """The command's first step: SIGTERM raises Interrupted from here on (Python's default
    would end the process at once, with no line), also while the command line is imported
    and in commands that run outside ``terminable``."""
    signal.signal(signal.SIGTERM, _on_signal)


@contextmanager
def terminable() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt / Interrupted inside the block (Python's
    default for SIGTERM would end the process at once, skipping the hand-back), deferred to the
    end of a ``critical`` storage operation or of a fork's hooks when one is in progress."""
    old_term = signal.signal(signal.SIGTERM, _on_signal)
    old_int = signal.signal(signal.SIGINT, _on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
        _pending.clear()


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Start child processes inside this block. SIGINT is blocked in this thread while they
    start: a child inherits the block (its main ignores SIGINT, then unblocks it, so a Ctrl-C
    never prints a worker's traceback), and a Ctrl-C that arrives meanwhile reaches this
    process when the block ends. Ignoring SIGINT here instead would lose it: a Ctrl-C during a
    worker's start (a second or more on a loaded machine) left the sweep running."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def ignore_sigint_in_child() -> None:
    """The first thing a worker does: ignore SIGINT, then take it out of the mask it inherited
    from ``sigint_deferred`` (a Ctrl-C that came while it started is discarded)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
