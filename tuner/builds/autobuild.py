"""The kernel builds a sweep makes for itself: the variants that could change what this
machine's GPUs run (tuner/builds/selection.py) and are not built yet, compiled side by side in
the background while the search measures the builds there are.

The compile runs at idle CPU priority (``SCHED_IDLE``, else nice 19): it only gets the cycles
the trial workers leave, so the search goes on beside it at close to its own speed. Figures
taken while a compile runs only nominate: every trial measured then is marked
(``TrialRecord.alongside_build``), and the figures that decide the winner (the confirmation and
the finalists, tuner/search/finalists.py) are taken after the compile has ended, never beside
it. A build that cannot be made (no network to fetch the source, no nvcc, a failed compile) is
no reason to stop the sweep: it goes on with the builds it has and says the one command that
makes the missing one."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.builds.selection import MissingBuild
from tuner.errors import TunerError

Builder = Callable[..., Any]  # tuner.builds.buildmake.build_variant's signature


@dataclass
class AutoBuilt:
    built: list[str] = field(default_factory=list)  # variant names now in builds_dir
    failed: list[str] = field(default_factory=list)  # one line each: why, and the command
    jobs: int = 0  # compile jobs each build ran with
    priority: str = ""  # the CPU priority the compiles ran at (idle_priority)
    seconds: float = 0.0  # wall time from the first build's start to the last one's end


def jobs_each(n_builds: int, cpus: int | None = None) -> int:
    """The cores shared between the builds that run side by side (at least one each)."""
    return max(1, (cpus or os.cpu_count() or 1) // max(1, n_builds))


def idle_priority() -> str:
    """Lower the calling thread, and every process it starts from now on (cmake, ninja, nvcc
    inherit it), to the idle CPU priority: ``SCHED_IDLE`` (runs only on cycles no other task
    wants), else nice 19. On Linux both apply to the calling thread only, so the sweep's own
    thread keeps its priority. Returns what was set ("idle", "nice 19" or "normal")."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "idle"
    except (AttributeError, OSError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 19)
        return "nice 19"
    except (AttributeError, OSError):
        return "normal"


def build_missing(missing: list[MissingBuild], builds_dir: Path,
                  log: Callable[[str], None] = lambda _line: None,
                  builder: Builder | None = None) -> AutoBuilt:
    """Build every variant of ``missing`` into ``builds_dir``, side by side, each at idle CPU
    priority. ``builder`` is tuner's ``build_variant`` unless a test passes another."""
    if builder is None:
        from tuner.builds.buildmake import build_variant
        builder = build_variant
    make: Builder = builder
    out = AutoBuilt(jobs=jobs_each(len(missing)))
    if not missing:
        return out
    results: dict[str, str | None] = {}
    priorities: list[str] = []
    t0 = time.monotonic()

    def one(m: MissingBuild) -> None:
        priorities.append(idle_priority())
        try:
            # One build of a variant at a time per builds folder: the sweeps of `sweep --gpus`
            # start together, and the later ones take the build the first made.
            with _variant_lock(builds_dir, m.variant):
                if not (builds_dir / m.variant / "build.json").is_file():
                    # The libraries only: the sweep never runs llama-bench (`tuner build`
                    # makes it, for comparisons with llama.cpp's own tool).
                    make(m.variant, source=None, builds_dir=builds_dir, cuda_arch=m.cuda_arch,
                         jobs=out.jobs, log=lambda line: log(f"[{m.variant}] {line}"),
                         bench=False)
            results[m.variant] = None
        except (TunerError, OSError) as exc:  # BadInput, EnvironmentUnfit; a folder it can't use
            results[m.variant] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__

    # Daemon threads: an interrupted sweep exits without waiting for a compile (it ends the
    # compile's process groups first: BackgroundBuilds.cancel, buildmake.stop_running).
    threads = [threading.Thread(target=one, args=(m,), daemon=True, name=f"build-{m.variant}")
               for m in missing]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.seconds = time.monotonic() - t0
    out.priority = priorities[0] if len(set(priorities)) == 1 else ", ".join(priorities)
    for m in missing:
        why = results.get(m.variant, "the build thread ended without a result")
        if why is None:
            out.built.append(m.variant)
        else:
            out.failed.append(f"build {m.variant} not made ({why}); `{m.command}` makes it "
                              "(add --source with a local sdist where there is no network)")
    return out


@contextlib.contextmanager
def _variant_lock(builds_dir: Path, variant: str) -> Iterator[None]:
    builds_dir.mkdir(parents=True, exist_ok=True)
    with (builds_dir / f".{variant}.lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class BackgroundBuilds:
    """``build_missing`` in a daemon thread: the sweep asks ``done()`` between trials and takes
    the result with ``wait()``."""

    def __init__(self, missing: list[MissingBuild], builds_dir: Path,
                 log: Callable[[str], None] = lambda _line: None,
                 builder: Builder | None = None) -> None:
        self.variants = [m.variant for m in missing]
        self._cancelled = threading.Event()
        self._result: AutoBuilt | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(missing, builds_dir, log, builder), daemon=True,
            name="tuner-builds")
        self._thread.start()

    def _run(self, missing: list[MissingBuild], builds_dir: Path, log: Callable[[str], None],
             builder: Builder | None) -> None:
        def guarded(line: str) -> None:
            # Every build step logs as it goes: after cancel(), the next line ends the build
            # (the command running then is ended with its process group by buildmake._run).
            if self._cancelled.is_set():
                raise TunerError("stopped: the sweep ended before the build did")
            log(line)

        try:
            self._result = build_missing(missing, builds_dir, guarded, builder)
        except BaseException as exc:  # handed to the sweep's thread by wait()
            self._error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def cancel(self) -> None:
        """Stop the compiles (an interrupted or failed sweep): their commands are ended and
        each build fails, leaving nothing that looks built."""
        from tuner.builds.buildmake import stop_running
        self._cancelled.set()
        stop_running()
        self._thread.join(30)

    def wait(self) -> AutoBuilt:
        """The builds' result, once every compile has ended."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result
