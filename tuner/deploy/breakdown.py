"""Where a served token's time goes, parent side: one config's stages
(tuner/results/breakdown.py) measured in a fresh spawned process (tuner/worker/breakdown.py),
its load's placement checked as for served figures, and the HTTP stage taken from the served
figures of the same config measured in the same session through a real llama_cpp.server.
This process never imports llama_cpp."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timezone

from tuner.deploy.prodconfig import model_entry
from tuner.deploy.served import check_placement, run_child
from tuner.deploy.servedfinal import ServedChoice
from tuner.deploy.service import service_env
from tuner.errors import BadInput, TunerError
from tuner.machine.cpus import default_threads
from tuner.results.breakdown import Stage, StageKey, TokenBreakdown
from tuner.results.records import FinalistReport, ServedFigures, Stat
from tuner.specs import TrialSpec, Workload
from tuner.worker.breakdown import IN_PROCESS, breakdown_main
from tuner.worker.protocol import BreakdownJob, BreakdownTimes, expect_reply


def measure_breakdown(model_path: str | os.PathLike[str], spec: TrialSpec, trial: int,
                      workload: Workload, lib_dir: str | None, *, threads: int | None = None,
                      served: ServedFigures | None = None, served_error: str | None = None,
                      warmup: int = 1, repetitions: int = 5,
                      timeout_s: float = 900) -> TokenBreakdown:
    """The per-token breakdown of ``spec`` (search trial ``trial``) at ``workload``'s depth and length,
    served with ``threads`` server threads (default: the trial's, else llama.cpp's default).
    ``served``: this config's served figures over HTTP (their generation speed is the ``http``
    stage); ``served_error``: why there are none."""
    if workload.gen_tokens < 2:
        raise BadInput("a per-token breakdown needs at least 2 generated tokens")
    if repetitions < 1:
        raise BadInput("a per-token breakdown needs at least one repetition")
    threads = threads or spec.context.n_threads or default_threads()
    entry = model_entry(spec, workload, str(model_path), threads)
    job = BreakdownJob(entry=entry, env=service_env(spec, lib_dir, model_path), warmup=warmup,
                       repetitions=repetitions, prompt_tokens=workload.prompt_tokens,
                       gen_tokens=workload.gen_tokens)
    answer, log = run_child(job, timeout_s, target=breakdown_main)
    times = expect_reply(answer, BreakdownTimes, "a breakdown job")
    check_placement(log, spec)
    stages = [_stage(k, times.ms.get(k), times.errors.get(k)) for k in IN_PROCESS]
    stages.append(http_stage(served, served_error))
    return TokenBreakdown(
        trial=trial, spec_key=spec.key(), label=spec.label(),
        prompt_tokens=workload.prompt_tokens, gen_tokens=workload.gen_tokens, warmup=warmup,
        repetitions=repetitions, sampling=times.sampling,
        threads=times.n_threads, stages=stages,
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def _stage(key: StageKey, ms: list[float] | None, error: str | None) -> Stage:
    if ms:
        return Stage(key=key, ms_per_token=Stat.of(ms))
    return Stage(key=key, error=error or "not measured")


def http_stage(served: ServedFigures | None, error: str | None) -> Stage:
    """The HTTP stage from served figures taken over HTTP: ms per token of each request."""
    if served is None or served.gen_tps is None:
        return Stage(key="http", error=error or "no served figures over HTTP")
    if served.source != "server":
        return Stage(key="http", error="the served figures were not taken over HTTP")
    return Stage(key="http", ms_per_token=Stat.of([1e3 / x for x in served.gen_tps.samples]))


def with_breakdown(report: FinalistReport, choice: ServedChoice, model_path: str | os.PathLike[str],
                   workload: Workload, lib_dirs: dict[str, str | None], repetitions: int,
                   timeout_s: float, note: Callable[[str], None]) -> FinalistReport:
    """``report`` with the winner's breakdown (at the server threads the served stage chose,
    its HTTP stage from the winner's served figures), or with why there is none; said on
    ``note`` either way. ``repetitions`` 0: not asked, ``report`` as it is."""
    if repetitions <= 0:
        return report
    record = choice.winner
    try:
        bd = measure_breakdown(model_path, record.spec, record.number, workload,
                               lib_dirs.get(record.spec.model.build), threads=choice.threads,
                               served=choice.served, served_error=choice.error,
                               repetitions=repetitions, timeout_s=timeout_s)
    except Exception as e:  # noqa: BLE001 - the config is still written; the reason is kept
        why = e.message if isinstance(e, TunerError) else f"{type(e).__name__}: {e}"
        note(f"per-token breakdown of #{record.number}: not measured: {why}")
        return report.model_copy(update={"breakdown_error": why})
    parts = [f"{sh.label} {sh.ms_per_token:.3f}" for sh in bd.shares()]
    note(f"per-token breakdown of #{record.number} (ms/token): " + ", ".join(parts))
    return report.model_copy(update={"breakdown": bd})
