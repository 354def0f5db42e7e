"""Ending a sweep on a signal: SIGINT (Ctrl-C) and SIGTERM stop the sweep where it is, the sweep
hands back the trial it was running (run again next time; finished ones are stored), and the CLI
prints one line and exits 128 + the signal number (130, 143). Workers ignore SIGINT (a Ctrl-C
reaches the whole process group): the parent kills them, so no worker prints a traceback."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

MESSAGE = "interrupted: run the same command to resume"


class Interrupted(BaseException):
    """A termination signal, raised in the main thread like KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


@contextmanager
def terminable() -> Iterator[None]:
    """SIGTERM raises Interrupted inside the block (Python's default would end the process at
    once, skipping the hand-back)."""
    def on_term(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextmanager
def sigint_ignored() -> Iterator[None]:
    """Start child processes inside this block: they inherit SIGINT ignored from the start
    (Python installs its KeyboardInterrupt handler only where SIGINT is not ignored)."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
