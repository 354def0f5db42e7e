"""The drift sentinel's verdict: a worker's first trial measured again at the end of its life.
If the two measurements of the same settings differ beyond their own noise, every trial the
worker measured carries a figure that depends on when it ran, and the report says so."""

from __future__ import annotations

import statistics

from tuner.results.records import WorkerDrift
from tuner.specs import Workload
from tuner.worker.runner import SentinelResult
from tuner.worker.trialrecord import now

# Below this relative change two medians of 3-5 repetitions are not told apart on a quiet GPU;
# a larger spread of either run raises the bar to that spread.
NOISE_FLOOR = 0.02


def _tps(seconds: list[float], tokens: int) -> list[float]:
    return [tokens / s for s in seconds if s > 0] if tokens else []


def _spread(xs: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    med = statistics.median(xs)
    return (max(xs) - min(xs)) / med if med else 0.0


def _change(start: list[float], end: list[float]) -> float | None:
    if not start or not end:
        return None
    a, b = statistics.median(start), statistics.median(end)
    return (b - a) / a if a else None


def worker_drift(study: str, result: SentinelResult, wl: Workload) -> WorkerDrift:
    pp0 = _tps(result.first.pp_seconds, wl.prompt_tokens)
    pp1 = _tps(result.end.pp_seconds, wl.prompt_tokens)
    tg0 = _tps(result.first.tg_seconds, wl.gen_tokens)
    tg1 = _tps(result.end.tg_seconds, wl.gen_tokens)
    noise = max([NOISE_FLOOR] + [_spread(x) for x in (pp0, pp1, tg0, tg1) if x])
    pp_d, tg_d = _change(pp0, pp1), _change(tg0, tg1)
    significant = any(d is not None and abs(d) > noise for d in (pp_d, tg_d))
    return WorkerDrift(
        study=study, worker_id=result.worker_id, build=result.build,
        first_trial=result.first_number if result.first_number is not None else -1,
        trials=[n for n in result.numbers if n is not None],
        pp_tps_start=statistics.median(pp0) if pp0 else None,
        pp_tps_end=statistics.median(pp1) if pp1 else None,
        tg_tps_start=statistics.median(tg0) if tg0 else None,
        tg_tps_end=statistics.median(tg1) if tg1 else None,
        pp_drift=pp_d, tg_drift=tg_d, noise=noise, significant=significant,
        measured_at=now(),
    )


def drifted_trials(drifts: list[WorkerDrift]) -> dict[int, WorkerDrift]:
    """Trial number -> the significant drift of the worker that measured it."""
    return {n: d for d in drifts if d.significant for n in d.trials}
