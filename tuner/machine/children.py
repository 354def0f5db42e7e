"""Child processes end with the command that started them, whatever ends it, SIGKILL included.

- A direct child (a llama_cpp.server, the config-check child, a trial worker, a per-GPU sweep)
  asks the kernel for a signal when its parent dies (``prctl(PR_SET_PDEATHSIG)``): set between
  fork and exec for a ``subprocess`` child (``popen_kwargs``), or first thing in a spawned
  multiprocessing child (``run_orphan_safe``). A parent that died before the request took effect
  is seen by the parent pid having changed, and the child ends at once.
- A child with children of its own in its own process group (a build: cmake, ninja, the
  compilers) gets a watchdog (``GroupWatchdog``): a small process that waits on a pipe only this
  process holds; when this process ends, however it ends, the pipe closes and the watchdog ends
  the whole group.

The signal asked is SIGKILL for servers and workers (they hold nothing to hand back) and
SIGTERM for a child sweep (it hands back its trial). The request belongs to the thread that
started the child: children are started by threads that live as long as they do."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from contextlib import suppress
from typing import Any

PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the parent's own clean-up remains
        return None
    return prctl


# Looked up once, in the parent: between fork and exec the child only calls it (no dlopen in a
# child forked from a process with threads).
_PRCTL = _load_prctl()


def die_with_parent(sig: int, parent: int) -> None:
    """Ask for ``sig`` when the parent dies; end now if ``parent`` is already gone."""
    if _PRCTL is None:
        return
    _PRCTL(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def popen_kwargs(sig: int = signal.SIGKILL) -> dict[str, Any]:
    """``subprocess.Popen`` keyword arguments that make the child end with this process."""
    parent = os.getpid()
    return {"preexec_fn": lambda: die_with_parent(sig, parent)}


def stop(proc: subprocess.Popen[bytes], grace_s: float = 15) -> None:
    """End a server child: SIGTERM, then SIGKILL after ``grace_s`` seconds, reaped either way."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace_s)


def run_orphan_safe(parent: int, sig: int, target: Callable[..., Any], *args: Any) -> Any:
    """A multiprocessing child's target: ``target(*args)`` once it dies with ``parent``."""
    die_with_parent(sig, parent)
    return target(*args)


def orphan_safe_args(target: Callable[..., Any], *args: Any,
                     sig: int = signal.SIGKILL) -> tuple[Any, ...]:
    """``args`` for ``Process(target=run_orphan_safe, args=...)`` that runs ``target``."""
    return (os.getpid(), int(sig), target, *args)


WATCHDOG = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
pgid = int(sys.argv[1])
if sys.stdin.buffer.read() == b"done":
    sys.exit(0)
for sig in (signal.SIGTERM, signal.SIGKILL):
    try:
        os.killpg(pgid, sig)
    except OSError:
        sys.exit(0)
    time.sleep(2)
"""


class GroupWatchdog:
    """Ends process group ``pgid`` when this process ends without calling ``done()``."""

    def __init__(self, pgid: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-I", "-c", WATCHDOG, str(pgid)],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

    def done(self) -> None:
        """The group ended or was ended here: the watchdog leaves it alone."""
        with suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"done")
            self.proc.stdin.close()
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
