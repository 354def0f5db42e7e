"""Spawns and feeds isolated trial workers. A worker serves up to ``trials_per_worker`` trials
that share its build and model settings, keeping the model loaded; it answers on its own pipe
under a timeout. A worker that dies (abort, segfault, exit) or overruns its time is turned into
an outcome, and the next trial gets a fresh worker: a crash inside llama.cpp never takes the
sweep down.

Why workers live short lives: on an H100, generation speed measured on the Nth context made by
one process fell by 5-7% from about the 7th context on, with or without tuner's log callback and
NVML reads (docs/benchmarks/probes/drift_probe.py, docs/benchmarks.md), while one context reused for as long
did not drift: state that llama.cpp's CUDA backend keeps per process across ``llama_free``.
A bounded life keeps every trial on one of a process's first contexts, and the drift sentinel
(the first trial's settings measured again when the worker ends) checks that it held."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import signal
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydantic import TypeAdapter

from tuner.evidence.deaths import says_out_of_memory
from tuner.machine.children import orphan_safe_args, run_orphan_safe
from tuner.machine.interrupt import sigint_deferred
from tuner.machine.tempdirs import temp_dir
from tuner.results.readings import TrialState
from tuner.specs import ModelSettings, TrialSpec, Workload
from tuner.worker.logcapture import last_words, read_tail
from tuner.worker.main import worker_main
from tuner.worker.outcome import Outcome
from tuner.worker.protocol import (
    REPLY,
    START_REPLY,
    Adopt,
    Hello,
    LoadFailed,
    Measure,
    Measured,
    ProtocolError,
    Ready,
    Refused,
    Stop,
    TrialFailed,
    WorkerJob,
    adoptable,
    expect_reply,
    receive,
    send,
)

SPAWN = mp.get_context("spawn")
# Numbers the worker logs of this process: unique across its runners (the finalists start one
# per round), so that no worker's log overwrites another's.
_JOB_NUMBERS = itertools.count(1)

__all__ = ["SPAWN", "Outcome", "Runner", "SentinelResult"]


@dataclass
class SentinelResult:
    """A worker's first complete trial, measured again when the worker ended."""

    worker_id: str
    build: str
    first_number: int | None
    numbers: list[int | None]
    first: Measured  # the worker's answer for the first trial
    end: Measured  # its answer for the same settings at the end of the worker's life


T = TypeVar("T")


@dataclass
class _Spare:
    """A probe kept alive after its Hello, and the temporary folder of its log."""

    worker: _Worker
    tmp: tempfile.TemporaryDirectory[str]

    def stop(self) -> None:
        self.worker.stop()
        self.tmp.cleanup()


class _Worker:
    def __init__(self, job: WorkerJob) -> None:
        self.job = job
        self.conn, child = SPAWN.Pipe()
        self.proc = SPAWN.Process(target=run_orphan_safe,  # ends with the sweep, even a SIGKILLed one
                                  args=orphan_safe_args(worker_main, child,
                                                        job.model_dump(mode="json")),
                                  daemon=True, name="tuner-worker")
        with sigint_deferred():  # a Ctrl-C is the parent's to handle; it kills its workers
            self.proc.start()
        child.close()
        self.hello: Ready | None = None
        self.worker_id = f"{socket.gethostname()}:{self.proc.pid}"
        self.served: list[tuple[int | None, TrialSpec, Workload, Measured | TrialFailed]] = []

    def call(self, msg: Measure | Adopt | Stop | None, adapter: TypeAdapter[T],
             timeout: float) -> T:
        """Send ``msg`` (if any) and wait for the answer, validated as one of ``adapter``'s
        messages. Raises EOFError when the worker died, TimeoutError when it did not answer in
        time, ProtocolError when the answer is malformed or the worker refused the request."""
        if msg is not None:
            send(self.conn, msg)
        if not self.conn.poll(timeout):
            raise TimeoutError
        answer = receive(self.conn, adapter)
        if isinstance(answer, Refused):
            raise ProtocolError(f"the worker refused the request: {answer.error}")
        return answer

    def death(self) -> tuple[str, str | None]:
        """Wait for a dead worker and describe how it ended."""
        self.proc.join(5)
        code = self.proc.exitcode
        if code is None:
            return "did not exit", None
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"killed by {name}", name
        return f"exited with status {code}", None

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()

    def stop(self) -> None:
        try:
            send(self.conn, Stop())
            self.proc.join(10)
        except (OSError, BrokenPipeError):
            pass
        self.kill()


class Runner:
    """Runs trials, reusing a worker while build and model settings stay the same."""

    def __init__(self, model_path: Path, work_dir: Path, lib_dirs: dict[str, str | None],
                 trial_timeout_s: float = 600.0, load_timeout_s: float = 600.0,
                 trials_per_worker: int = 2, sentinel: bool = True,
                 on_sentinel: Callable[[SentinelResult], None] | None = None) -> None:
        self.model_path = Path(model_path).resolve()
        self.work_dir = Path(work_dir)
        self.lib_dirs = lib_dirs
        self.trial_timeout_s = trial_timeout_s
        self.load_timeout_s = load_timeout_s
        self.trials_per_worker = max(1, trials_per_worker)
        self.sentinel = sentinel
        self.on_sentinel = on_sentinel
        self._worker: _Worker | None = None
        self._key: str | None = None
        self._spares: dict[str, _Spare] = {}  # build -> a probe kept (probe_hello's keep)
        self.load_log = ""

    def _job(self, ms: ModelSettings, log_path: Path | None = None,
             probe_only: bool = False) -> WorkerJob:
        if log_path is None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.work_dir / (f"worker-{ms.build}-{ms.worker_key()}-{os.getpid()}-"
                                        f"{next(_JOB_NUMBERS)}.log")
        return WorkerJob(model_path=str(self.model_path), model_settings=ms,
                         lib_dir=self.lib_dirs.get(ms.build), log_path=str(log_path),
                         probe_only=probe_only)

    def probe_hello(self, ms: ModelSettings, keep: bool = False) -> Hello:
        """Start a worker that only reports what its library is (no model load). Its log goes
        to a temporary folder: a probe leaves nothing in the results. ``keep``: the probe
        stays, as the spare of its build, until the first worker this runner needs: that one
        is the probe itself where its settings ask the probe's environment (``Adopt``: its
        log moves to the trial worker's file), which saves a process start and a library load
        per sweep. Every other spare is stopped then, so none idles through a measurement."""
        tmp = temp_dir("tuner-probe-")
        job = self._job(ms, Path(tmp.name) / "probe.log", probe_only=True)
        w = _Worker(job)
        try:
            hello = expect_reply(w.call(None, START_REPLY, self.load_timeout_s), Hello,
                                 "a probe")
        except (EOFError, TimeoutError, OSError):
            why, _ = w.death()
            tail = read_tail(job.log_path + ".stdio", 5)
            w.kill()
            tmp.cleanup()
            raise RuntimeError(f"probe worker {why}: {' | '.join(tail)}") from None
        except BaseException:
            w.kill()
            tmp.cleanup()
            raise
        if keep:
            self._drop_spare(ms.build)
            self._spares[ms.build] = _Spare(w, tmp)
        else:
            w.stop()
            tmp.cleanup()
        return hello

    def _drop_spare(self, build: str) -> None:
        spare = self._spares.pop(build, None)
        if spare is not None:
            spare.stop()

    def _drop_spares(self) -> None:
        for build in list(self._spares):
            self._drop_spare(build)

    def _start(self, ms: ModelSettings) -> tuple[_Worker, Adopt | None, _Spare | None]:
        """A new worker for ``ms``: its build's spare probe where it fits (and the message that
        makes it a trial worker), else a fresh process. Every other spare stops."""
        job = self._job(ms)
        spare = self._spares.pop(ms.build, None)
        self._drop_spares()
        if spare is None:
            return _Worker(job), None, None
        if spare.worker.proc.is_alive() and adoptable(spare.worker.job.model_settings, ms):
            spare.worker.job = job
            return spare.worker, Adopt(model_settings=ms, log_path=job.log_path), spare
        spare.stop()
        return _Worker(job), None, None

    def _ensure_worker(self, ms: ModelSettings) -> Outcome | None:
        """A worker with the model loaded, or the outcome of failing to get one."""
        key = ms.worker_key()
        w0 = self._worker
        if (w0 is not None and self._key == key and w0.proc.is_alive()
                and len(w0.served) < self.trials_per_worker):
            return None
        self.close()
        w, adopt, spare = self._start(ms)
        try:
            hello = w.call(adopt, START_REPLY, self.load_timeout_s)
        except TimeoutError:
            w.kill()
            return Outcome(state=TrialState.TIMEOUT,
                           error=f"model load took over {self.load_timeout_s:.0f}s",
                           log_tail=read_tail(w.job.log_path))
        except (EOFError, OSError):
            return self._crash(w, "during model load")
        except ProtocolError:
            w.kill()
            raise
        finally:
            if spare is not None:
                spare.tmp.cleanup()  # the adopted probe's logs are in the trial worker's files
        if isinstance(hello, LoadFailed):
            w.stop()
            return Outcome(state=TrialState.INFEASIBLE, error=hello.error,
                           log_tail=hello.log.splitlines()[-30:], load_log=hello.log)
        try:
            hello = expect_reply(hello, Ready, "a loading worker")
        except ProtocolError:
            w.kill()
            raise
        self._worker, self._key = w, key
        w.hello = hello
        self.load_log = hello.log
        return None

    def _crash(self, w: _Worker, when: str) -> Outcome:
        why, sig = w.death()
        w.kill()
        tail = read_tail(w.job.log_path) + last_words(w.job.log_path + ".stdio")
        text = "\n".join(tail)
        oom = says_out_of_memory(text)
        error = f"worker {why} {when}" + (" (out of memory)" if oom else "")
        return Outcome(state=TrialState.INFEASIBLE if oom else TrialState.CRASHED, error=error,
                       signal=sig, log_tail=tail,
                       load_log=self.load_log if w.hello else "", hello=w.hello)

    def run(self, spec: TrialSpec, workload: Workload, number: int | None = None,
            prune_against: list[float] | None = None) -> Outcome:
        """One trial in this runner's worker. ``prune_against``: the best usable trial's
        per-repetition request seconds, to stop this trial early when it is clearly slower
        (tuner/search/pruning.py); the sentinel and the finalists never pass it."""
        failed = self._ensure_worker(spec.model)
        if failed is not None:
            return failed
        w = self._worker
        assert w is not None
        try:
            answer = w.call(Measure(context=spec.context, workload=workload,
                                    prune_against=prune_against), REPLY, self.trial_timeout_s)
        except TimeoutError:
            w.kill()
            self._worker = None
            return Outcome(state=TrialState.TIMEOUT,
                           error=f"trial ran over {self.trial_timeout_s:.0f}s; worker killed",
                           log_tail=read_tail(w.job.log_path), load_log=self.load_log,
                           hello=w.hello)
        except (EOFError, OSError, BrokenPipeError):
            self._worker = None
            return self._crash(w, "during the trial")
        assert not isinstance(answer, Refused)  # call raises for it
        w.served.append((number, spec, workload, answer))
        if isinstance(answer, Measured):
            state = TrialState.PRUNED if answer.pruned is not None else TrialState.COMPLETE
            return Outcome(state=state, reply=answer, error=answer.pruned,
                           load_log=self.load_log, hello=w.hello, worker_id=w.worker_id)
        return Outcome(state=answer.state, reply=answer, error=answer.error,
                       log_tail=answer.log.splitlines()[-30:], load_log=self.load_log,
                       hello=w.hello, worker_id=w.worker_id)

    def _run_sentinel(self, w: _Worker) -> None:
        """Measure the worker's first complete trial again, on a new context, before it stops."""
        first = next(((n, s, wl, a) for n, s, wl, a in w.served
                      if isinstance(a, Measured) and a.pruned is None), None)
        if first is None or not self.sentinel or not w.proc.is_alive():
            return
        number, spec, wl, answer = first
        assert isinstance(answer, Measured)
        try:
            end = w.call(Measure(context=spec.context, workload=wl), REPLY, self.trial_timeout_s)
        except (TimeoutError, EOFError, OSError):
            return  # the stop below reaps it; a sentinel never turns into a trial outcome
        if not isinstance(end, Measured):
            return
        if self.on_sentinel is not None:
            self.on_sentinel(SentinelResult(w.worker_id, spec.model.build, number,
                                            [n for n, *_ in w.served], answer, end))

    def close(self) -> None:
        if self._worker is not None:
            self._run_sentinel(self._worker)
            self._worker.stop()
        self._worker, self._key = None, None

    def shutdown(self) -> None:
        """The current worker and every spare probe stopped."""
        self.close()
        self._drop_spares()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None and self._worker is not None:
            self._worker.kill()  # interrupted or failed: no waiting for a busy worker
            self._worker = None
        self.shutdown()
