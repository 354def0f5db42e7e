"""The finalists: after the search, the leading configs are measured again, each round in a
fresh worker per config, interleaved (A B C, A B C, ...), so that a noisy first measurement or a
worker's history cannot crown the wrong config. Each finalist gets a confidence interval of its
request time, prompt and generation speed, and of its ratio to the leader (paired by round, which
cancels what a round shares: clocks, temperature, the neighbours' load). The leader wins only if
the runner-up is slower beyond that interval; otherwise it is a tie and the lighter config (less
GPU memory, no special kernel build, smaller batches) wins, and the decision says so."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from scipy import stats

from tuner.drift import search_margin
from tuner.records import (
    FinalistFigures,
    FinalistReport,
    Interval,
    TrialRecord,
    WorkerDrift,
)
from tuner.runner import Outcome
from tuner.specs import TrialSpec
from tuner.trialrecord import now

PLAIN_BUILDS = ("installed", "default")  # no special kernel build needed to deploy these


@dataclass(frozen=True)
class FinalistOptions:
    top: int = 3  # the best N trials always go to the final
    within: float = 0.03  # and every trial within 3% of the best (widened by worker drift)
    most: int = 6  # at most this many finalists
    rounds: int = 5  # fresh-worker rounds per finalist
    level: float = 0.95


def select(records: list[TrialRecord], planned: set[str], drifts: list[WorkerDrift],
           opts: FinalistOptions) -> list[TrialRecord]:
    """The leading usable trials of the current plan, best first."""
    usable = sorted((r for r in records if r.usable and r.spec_key in planned),
                    key=lambda r: (r.objective, r.number))
    if not usable:
        return []
    best = usable[0].objective or 0.0
    margin = search_margin(drifts, opts.within)
    chosen: dict[str, TrialRecord] = {}
    for r in usable:
        close = (r.objective or math.inf) <= best * (1 + margin)
        if (len(chosen) < opts.top or close) and r.spec_key not in chosen:
            chosen[r.spec_key] = r
    return list(chosen.values())[: opts.most]


@dataclass
class _Round:
    request_s: float
    pp_tps: float
    tg_tps: float | None
    gpu_mib: float | None
    verified: bool


def _round_of(record: TrialRecord) -> _Round | None:
    m = record.measurement
    if m is None:
        return None
    return _Round(m.request_seconds.median, m.pp_tps.median,
                  m.tg_tps.median if m.tg_tps else None, m.gpu_peak_mib,
                  record.verification.verified)


def _interval(xs: list[float], level: float) -> Interval:
    """Mean and Student-t interval of per-round medians (each round is one fresh worker)."""
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return Interval(value=mean, low=mean, high=mean, level=level)
    half = stats.t.ppf((1 + level) / 2, len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    # Times, speeds and their ratios are positive: a wide interval is cut at zero.
    return Interval(value=mean, low=max(0.0, mean - half), high=mean + half, level=level)


Measure = Callable[[TrialSpec], tuple[Outcome, TrialRecord]]


def remeasure(finalists: list[TrialRecord], measure: Measure,
              rounds: int) -> dict[str, list[_Round]]:
    """Interleaved rounds: every finalist once per round, in the same order, each in a fresh
    worker (``measure`` spawns one). A round a finalist fails in is left out for it."""
    got: dict[str, list[_Round]] = {r.spec_key: [] for r in finalists}
    for _ in range(rounds):
        for f in finalists:
            _, record = measure(f.spec)
            rnd = _round_of(record) if record.state.value == "complete" else None
            if rnd is not None:
                got[f.spec_key].append(rnd)
    return got


def _lightness(f: FinalistFigures, spec: TrialSpec) -> tuple[float, int, float]:
    """Less GPU memory first, then no special kernel build, then the faster point estimate."""
    return (f.gpu_peak_mib if f.gpu_peak_mib is not None else math.inf,
            0 if spec.model.build in PLAIN_BUILDS else 1, f.request_seconds.value)


def decide(study: str, finalists: list[TrialRecord], rounds: dict[str, list[_Round]],
           level: float = 0.95) -> FinalistReport | None:
    """Intervals, the leader, and the winner; None when no finalist measured in any round."""
    measured = [f for f in finalists if rounds.get(f.spec_key)]
    if not measured:
        return None
    mean_req = {f.spec_key: statistics.fmean(x.request_s for x in rounds[f.spec_key])
                for f in measured}
    leader = min(measured, key=lambda f: mean_req[f.spec_key])
    lead_rounds = rounds[leader.spec_key]
    figures: list[FinalistFigures] = []
    for f in measured:
        rs = rounds[f.spec_key]
        paired = [a.request_s / b.request_s for a, b in zip(rs, lead_rounds)]
        tg = [x.tg_tps for x in rs if x.tg_tps is not None]
        mibs = [x.gpu_mib for x in rs if x.gpu_mib is not None]
        figures.append(FinalistFigures(
            trial=f.number, spec_key=f.spec_key, label=f.spec.label(), rounds=len(rs),
            samples=len(rs) * f.workload.repetitions,
            request_seconds=_interval([x.request_s for x in rs], level),
            pp_tps=_interval([x.pp_tps for x in rs], level),
            tg_tps=_interval(tg, level) if tg else None,
            ratio_to_leader=_interval(paired or [1.0], level),
            gpu_peak_mib=max(mibs) if mibs else None,
            build=f.spec.model.build, verified=all(x.verified for x in rs)))
    figures.sort(key=lambda x: (not x.verified, x.request_seconds.value))
    specs = {f.spec_key: f.spec for f in measured}
    lead = figures[0]  # an unproven re-measurement never leads a proven one
    if len(figures) == 1:
        return FinalistReport(study=study, level=level, finalists=figures,
                              winner_trial=lead.trial, leader_trial=lead.trial, tie=False,
                              reason="the only finalist", measured_at=now())
    runner_up = figures[1]
    # One round gives no interval: nothing can be "beyond" it, so it is decided as a tie.
    if runner_up.rounds >= 2 and lead.rounds >= 2 and runner_up.ratio_to_leader.low > 1.0:
        gap = (runner_up.ratio_to_leader.value - 1) * 100
        reason = (f"#{lead.trial} is faster than the runner-up #{runner_up.trial} by {gap:.1f}% "
                  f"({level:.0%} interval of the ratio {runner_up.ratio_to_leader.low:.3f}-"
                  f"{runner_up.ratio_to_leader.high:.3f}, above 1)")
        return FinalistReport(study=study, level=level, finalists=figures,
                              winner_trial=lead.trial, leader_trial=lead.trial, tie=False,
                              reason=reason, measured_at=now())
    tied = [f for f in figures if f is lead or (
        (f.ratio_to_leader.low <= 1.0 or f.rounds < 2 or lead.rounds < 2)
        and f.verified >= lead.verified)]
    winner = min(tied, key=lambda f: _lightness(f, specs[f.spec_key]))
    others = ", ".join(f"#{f.trial}" for f in tied if f is not lead)
    reason = (f"tie: {others} not slower than the fastest, #{lead.trial}, beyond the "
              f"{level:.0%} interval; #{winner.trial} is the lighter config (GPU memory, then "
              "kernel build, then speed)")
    return FinalistReport(study=study, level=level, finalists=figures, winner_trial=winner.trial,
                          leader_trial=lead.trial, tie=True, reason=reason, measured_at=now())

