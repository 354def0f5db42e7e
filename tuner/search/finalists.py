"""The finalists: after the search, the leading configs are measured again in rounds of fresh
workers, interleaved (A B C, B C A, ...), so that a noisy first measurement or a worker's
history cannot crown the wrong config.

A round measures every config once, each on its own new context; configs that share a worker
(same kernel build and model settings) share a fresh one, up to ``per_worker`` (3) per process,
which keeps each on one of the process's first 6 contexts (a placement proof and a timed context
each): the drift inside a process came at its 8th context (docs/benchmarks.md). The order turns
by one place per round, so a config's position in its process changes from round to round and
no config always goes first. Pairing by round (the ratio to the leader below) then also cancels
what the configs of one process share.

First the confirmation: the search's best ``confirm`` configs (10) within ``confirm_within``
(8%, widened by worker drift) of its best, each kernel build's best ``PER_BUILD`` (2), and any
other that ``select`` would make a finalist, get ``confirm_rounds`` (2) rounds each. Their figures become medians over processes (the search
trial's, unless it was measured beside a kernel compile, and the fresh workers'), and
the finalists are chosen from those: a single process's prompt figure can sit 8% off another
process's for the same settings (runs 5, 12 and 13 of docs/benchmarks.md), so the search's
one-process ranking is not the config's. The confirmation rounds count as the finalists' first
rounds. Each finalist gets a confidence interval of its
request time, prompt and generation speed, and of its ratio to the leader (paired by round, which
cancels what a round shares: clocks, temperature, the neighbours' load).

The decision: the fastest mean leads. A finalist whose ratio interval lies above 1 is slower. One
whose interval's top is at most 1 + ``equivalent`` (1%) is proven as fast for practical
purposes: leader and such finalists tie, and the lightest (less GPU memory, no special kernel
build) wins. Any other finalist is undecided: more rounds run, for the leader and the undecided
only, up to ``max_rounds`` (none for a finalist that the rounds left could not decide at
the spread measured); still undecided then, the fastest mean is kept. A lighter config
never wins on an interval that allows it to be more than 1% slower: on an H100 (run 5 of
docs/benchmarks.md) a looser rule picked configs 2.5-4% behind the best, and in run 10 a 2%
margin let a lighter config that the tuner had proven within 2% land 2.4% behind llama-bench's
best. The two tools differ by about 1% on one config, so a tie's margin leaves room for that."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tuner.results.records import (
    ConfirmedFigures,
    FinalistFigures,
    FinalistReport,
    Interval,
    Stat,
    TrialRecord,
    TrialState,
    WorkerDrift,
)
from tuner.search.studentt import t_quantile
from tuner.specs import TrialSpec
from tuner.worker.trialrecord import now

PLAIN_BUILDS = ("installed", "default")  # no special kernel build needed to deploy these
EQUIVALENT = 0.01  # a lighter config may win only when proven at most 1% slower
PER_BUILD = 2  # each kernel build's best N always join the confirmation
# The confirmation leaves out configs further than this behind the search's best: in the 12
# confirmations of runs 17-27 (docs/benchmarks.md) no config gained more than 3.7% on the best
# between its search figure and its medians over processes (4.6% for trials measured beside a
# compile, which join as their build's best anyway), and a finalist must end within ``within``
# (3%) of the best median: 3.7% + 3% leaves 1.3% to spare.
CONFIRM_WITHIN = 0.08
PER_WORKER = 3  # configs one fresh worker measures per round (module docstring)


@dataclass(frozen=True)
class FinalistOptions:
    top: int = 3  # the best N trials always go to the final
    within: float = 0.03  # and every trial within 3% of the best (widened by worker drift)
    most: int = 6  # at most this many finalists
    rounds: int = 5  # fresh-worker rounds per finalist
    level: float = 0.95
    equivalent: float = EQUIVALENT
    max_rounds: int = 10  # extra rounds for the leader and the undecided, up to this many
    confirm: int = 10  # the search's best N are re-measured before the finalists are chosen
    confirm_within: float = CONFIRM_WITHIN  # of them, those this close to the best
    confirm_rounds: int = 2  # rounds each (0: finalists from the search's figures)
    per_worker: int = PER_WORKER  # configs sharing one fresh worker in a round (1: one each)


def select(records: list[TrialRecord], planned: set[str], drifts: list[WorkerDrift],
           opts: FinalistOptions) -> list[TrialRecord]:
    """The leading usable trials of the current plan, best first: the top ``opts.top``, and
    every one within the margin of the best (an unstable one by its fastest repetition)."""
    usable = _ranked(records, planned)
    if not usable:
        return []

    def judged(r: TrialRecord) -> float:
        # A trial whose repetitions spread beyond the stability limit (a phase that changed
        # level mid-trial: run 11 of docs/benchmarks.md) is judged by its fastest repetition:
        # its median may say more about the machine than about the settings.
        m = r.measurement
        fastest = m.request_seconds.min if m is not None and m.unstable else r.objective
        return fastest or math.inf

    return _leading(usable, lambda r: r.spec_key, judged, usable[0].objective or 0.0,
                    search_margin(drifts, opts.within), opts)


def _ranked(records: list[TrialRecord], planned: set[str]) -> list[TrialRecord]:
    """The usable trials of the current plan, best objective first."""
    return sorted((r for r in records if r.usable and r.spec_key in planned),
                  key=lambda r: (r.objective, r.number))


T = TypeVar("T")


def _leading(ranked: list[T], key: Callable[[T], str], value: Callable[[T], float], best: float,
             margin: float, opts: FinalistOptions) -> list[T]:
    """Of ``ranked`` (best first), one per config: the first ``opts.top``, and every one whose
    ``value`` is within ``margin`` of ``best``; at most ``opts.most``."""
    chosen: dict[str, T] = {}
    for x in ranked:
        if key(x) not in chosen and (len(chosen) < opts.top or value(x) <= best * (1 + margin)):
            chosen[key(x)] = x
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


def interval(xs: list[float], level: float) -> Interval:
    """Mean and Student-t interval of per-round medians (each round is a fresh process)."""
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return Interval(value=mean, low=mean, high=mean, level=level)
    half = t_quantile(level, len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    # Times, speeds and their ratios are positive: a wide interval is cut at zero.
    return Interval(value=mean, low=max(0.0, mean - half), high=mean + half, level=level)


MeasureRound = Callable[[list[TrialSpec]], list[TrialRecord]]
"""Measures one round: every spec once, in the order given, in fresh workers (``workers``
says which share one); a record per spec, in the same order."""


def workers(specs: list[TrialSpec], per_worker: int) -> list[list[int]]:
    """Which of ``specs`` (by index, in order) share a fresh worker: those with the same kernel
    build and model settings, in groups as even as possible of at most ``per_worker``."""
    by_key: dict[str, list[int]] = {}
    for i, spec in enumerate(specs):
        by_key.setdefault(spec.model.worker_key(), []).append(i)
    out: list[list[int]] = []
    for same in by_key.values():
        n = -(-len(same) // max(1, per_worker))
        out.extend(same[k * len(same) // n:(k + 1) * len(same) // n] for k in range(n))
    return out


def turned(finalists: list[T], by: int) -> list[T]:
    """``finalists`` turned by ``by`` places: round r starts with the (r mod n)-th."""
    k = by % len(finalists) if finalists else 0
    return finalists[k:] + finalists[:k]


def remeasure(finalists: list[TrialRecord], measure: MeasureRound, rounds: int,
              got: dict[str, list[_Round]] | None = None) -> dict[str, list[_Round]]:
    """Interleaved rounds: every finalist once per round (``measure``), the order turned by
    one place per round, appended to ``got``. A round a finalist fails in is left out for it."""
    got = got if got is not None else {}
    for f in finalists:
        got.setdefault(f.spec_key, [])
    for _ in range(rounds):
        order = turned(finalists, max(len(got[f.spec_key]) for f in finalists))
        records = measure([f.spec for f in order])
        for f, record in zip(order, records, strict=True):
            rnd = _round_of(record) if record.state is TrialState.COMPLETE else None
            if rnd is not None:
                got[f.spec_key].append(rnd)
    return got


def settle(study: str, finalists: list[TrialRecord], measure: MeasureRound,
           opts: FinalistOptions,
           got: dict[str, list[_Round]] | None = None) -> FinalistReport | None:
    """Interleaved rounds of every finalist up to ``opts.rounds`` (``got``: rounds already
    measured, e.g. by the confirmation), then one more round at a time of the leader and the
    undecided finalists while any is undecided, up to ``opts.max_rounds``. A finalist that more
    rounds could not decide (``_futile``) gets none: the rounds left are spent only where they
    can change the answer."""
    got = {f.spec_key: list((got or {}).get(f.spec_key, [])) for f in finalists}
    have = min(len(v) for v in got.values()) if got else 0
    remeasure(finalists, measure, max(0, opts.rounds - have), got)
    by_trial = {f.number: f for f in finalists}
    while True:
        report = decide(study, finalists, got, opts.level, opts.equivalent)
        if report is None or not report.undecided:
            return report
        leader = by_trial[report.leader_trial]
        if len(got[leader.spec_key]) >= opts.max_rounds:
            return report
        figures = {f.trial: f for f in report.finalists}
        open_ = [t for t in report.undecided
                 if not _futile(figures[t], opts.max_rounds, opts.level, opts.equivalent)]
        if not open_:
            names = ", ".join(f"#{t}" for t in report.undecided)
            return report.model_copy(update={"reason": (
                f"{report.reason}; {names} would stay undecided at {opts.max_rounds} rounds at "
                "the spread measured, so no more were run")})
        remeasure([leader] + [by_trial[t] for t in open_], measure, 1, got)


def candidates(records: list[TrialRecord], planned: set[str], drifts: list[WorkerDrift],
               opts: FinalistOptions) -> list[TrialRecord]:
    """What the confirmation re-measures, best first: the best ``opts.confirm`` usable trials
    of the plan within ``opts.confirm_within`` of the best (widened by the workers' drift, as
    ``select`` widens its margin), the best ``PER_BUILD`` of each kernel build, and every
    trial ``select`` would make a finalist. Without a confirmation, the finalists themselves.

    Each build's leaders go in whatever their rank: a build's trials can have been measured
    under other conditions than another's (beside its own compile, tuner/builds/autobuild.py,
    or in a worker that drifted), and a ranking across builds taken in one process each is the
    very thing the confirmation checks."""
    chosen = select(records, planned, drifts, opts)
    if not confirms(opts):
        return chosen
    ranked = _ranked(records, planned)
    if not ranked:
        return chosen
    near = (ranked[0].objective or 0.0) * (1 + search_margin(drifts, opts.confirm_within))
    pool = {r.spec_key: r for r in ranked[: opts.confirm] if (r.objective or math.inf) <= near}
    per_build: dict[str, int] = {}
    for r in ranked:
        build = r.spec.model.build
        if per_build.get(build, 0) < PER_BUILD:
            per_build[build] = per_build.get(build, 0) + 1
            pool.setdefault(r.spec_key, r)
    for r in chosen:
        pool.setdefault(r.spec_key, r)
    return sorted(pool.values(), key=lambda r: (r.objective, r.number))


def confirms(opts: FinalistOptions) -> bool:
    return opts.confirm > 0 and opts.confirm_rounds > 0 and opts.rounds > 0


def confirmed_figures(record: TrialRecord, rounds: list[_Round],
                      asked: int) -> ConfirmedFigures | None:
    """``record``'s figures as medians over processes: its own search trial's, then each fresh
    worker's round (``asked`` were run). A search trial measured while a kernel build compiled
    counts only as a nomination: its figures stay out, the fresh workers' alone are the
    config's. None when there is no figure left."""
    own = _round_of(record)
    if own is None:
        return None
    procs = [*([] if record.alongside_build else [own]), *rounds]
    if not procs:
        return None
    tg = [x.tg_tps for x in procs if x.tg_tps is not None]
    return ConfirmedFigures(
        trial=record.number, spec_key=record.spec_key, label=record.spec.label(),
        processes=len(procs), request_seconds=Stat.of([x.request_s for x in procs]),
        pp_tps=Stat.of([x.pp_tps for x in procs]), tg_tps=Stat.of(tg) if tg else None,
        verified=all(x.verified for x in procs), failed_rounds=asked - len(rounds))


def confirm(pool: list[TrialRecord], measure: MeasureRound, opts: FinalistOptions,
            ) -> tuple[list[ConfirmedFigures], dict[str, list[_Round]]]:
    """``opts.confirm_rounds`` interleaved rounds of every config of ``pool``, in fresh
    workers; the figures over processes, proven ones first, fastest median first, and the
    rounds (the finalists' first rounds)."""
    got = remeasure(pool, measure, opts.confirm_rounds)
    figures = [c for r in pool
               if (c := confirmed_figures(r, got[r.spec_key], opts.confirm_rounds)) is not None]
    figures.sort(key=lambda c: (not c.verified, c.request_seconds.median, c.trial))
    return figures, got


def from_confirmed(confirmed: list[ConfirmedFigures], pool: list[TrialRecord],
                   opts: FinalistOptions) -> list[TrialRecord]:
    """The finalists, chosen on the figures over processes: the top ``opts.top`` proven in
    every process (a config that failed in a fresh worker is out), and every such one within
    ``opts.within`` of the best median, at most ``opts.most``. The margin is not widened by
    the search workers' drift, as ``select`` does: two of three processes here are fresh
    workers of one trial each."""
    by_key = {r.spec_key: r for r in pool}
    proven = [c for c in confirmed if c.proven and c.spec_key in by_key]
    if not proven:
        return []
    chosen = _leading(proven, lambda c: c.spec_key, lambda c: c.request_seconds.median,
                      proven[0].request_seconds.median, opts.within, opts)
    return [by_key[c.spec_key] for c in chosen]


@dataclass
class Confirmation:
    """The confirmation's answer: the finalists, the rounds they were measured in (their
    first rounds; None without a confirmation) and every confirmed config's figures."""

    finalists: list[TrialRecord]
    rounds: dict[str, list[_Round]] | None
    confirmed: list[ConfirmedFigures]


def confirmation(pool: list[TrialRecord], measure: MeasureRound,
                 opts: FinalistOptions) -> Confirmation:
    """The confirmation of ``pool`` (``candidates``' answer) and the finalists chosen from it;
    without one (``confirms``), the pool itself."""
    if not confirms(opts):
        return Confirmation(pool, None, [])
    confirmed, got = confirm(pool, measure, opts)
    finalists = from_confirmed(confirmed, pool, opts)
    return Confirmation(finalists, {f.spec_key: got[f.spec_key] for f in finalists}, confirmed)


def final_decision(study: str, confirmed: Confirmation, measure: MeasureRound,
                   opts: FinalistOptions) -> FinalistReport | None:
    """The finalists' decision (``settle``), carrying the confirmation's figures and what it
    left out; None without a finalist."""
    if not confirmed.finalists:
        return None
    report = settle(study, confirmed.finalists, measure, opts, confirmed.rounds)
    if report is None or not confirmed.confirmed:
        return report
    note = left_out_note(confirmed.confirmed)
    reason = f"{report.reason}; {note}" if note else report.reason
    return report.model_copy(update={"confirmed": confirmed.confirmed, "reason": reason})


def confirm_and_settle(study: str, pool: list[TrialRecord], measure: MeasureRound,
                       opts: FinalistOptions) -> FinalistReport | None:
    """The confirmation of ``pool`` (when ``opts`` asks for one), the finalists chosen from
    it, and their decision (``settle``); ``pool`` is ``candidates``' answer."""
    return final_decision(study, confirmation(pool, measure, opts), measure, opts)


def search_margin(drifts: list[WorkerDrift], floor: float) -> float:
    """How close to the best a trial must be to become a finalist: ``floor``, widened to the
    largest drift any worker showed (a drifted worker's figures are off by that much)."""
    worst = max((abs(d.tg_drift or 0.0) for d in drifts), default=0.0)
    worst = max([worst] + [abs(d.pp_drift or 0.0) for d in drifts])
    return max(floor, worst)


def left_out_note(confirmed: list[ConfirmedFigures]) -> str | None:
    """What the decision says of configs the confirmation dropped because a fresh worker did
    not complete them (crashed, timed out, killed): never left out silently."""
    failed = [c for c in confirmed if c.failed_rounds]
    if not failed:
        return None
    names = ", ".join(f"#{c.trial} ({c.failed_rounds} failed)" for c in failed)
    return (f"left out of the finalists: {names}: a fresh worker measuring it did not complete "
            "(crashed, timed out or was killed)")


def _futile(f: FinalistFigures, max_rounds: int, level: float, equivalent: float) -> bool:
    """Whether ``max_rounds`` rounds would still leave ``f`` undecided, were its paired ratio to
    the leader to keep the mean and spread measured so far: its interval at that many rounds
    would still reach both to 1 (not proven slower) and above 1 + ``equivalent`` (not proven
    as fast). With ties between configs a few tenths of a percent apart and a spread of a few
    percent, the rounds up to the cap cannot settle them: they only cost time."""
    n = f.rounds
    if n < 2 or n >= max_rounds:
        return False
    ratio = f.ratio_to_leader
    half_now = ratio.high - ratio.value
    sd = half_now * math.sqrt(n) / t_quantile(level, n - 1)
    half_then = t_quantile(level, max_rounds - 1) * sd / math.sqrt(max_rounds)
    return ratio.value - half_then <= 1.0 and ratio.value + half_then > 1 + equivalent


def _lightness(f: FinalistFigures, spec: TrialSpec) -> tuple[float, int, float]:
    """Less GPU memory first, then no special kernel build, then the faster point estimate."""
    return (f.gpu_peak_mib if f.gpu_peak_mib is not None else math.inf,
            0 if spec.model.build in PLAIN_BUILDS else 1, f.request_seconds.value)


def _figures(f: TrialRecord, rs: list[_Round], lead_rounds: list[_Round], level: float,
             verified: bool) -> FinalistFigures:
    """A finalist's intervals over its rounds ``rs``, its ratio to the leader paired by round."""
    paired = [a.request_s / b.request_s for a, b in zip(rs, lead_rounds)]
    tg = [x.tg_tps for x in rs if x.tg_tps is not None]
    mibs = [x.gpu_mib for x in rs if x.gpu_mib is not None]
    return FinalistFigures(
        trial=f.number, spec_key=f.spec_key, label=f.spec.label(), rounds=len(rs),
        samples=len(rs) * f.workload.repetitions,
        request_seconds=interval([x.request_s for x in rs], level),
        pp_tps=interval([x.pp_tps for x in rs], level),
        tg_tps=interval(tg, level) if tg else None,
        ratio_to_leader=interval(paired or [1.0], level),
        gpu_peak_mib=max(mibs) if mibs else None,
        build=f.spec.model.build, verified=verified)


def decide(study: str, finalists: list[TrialRecord], rounds: dict[str, list[_Round]],
           level: float = 0.95, equivalent: float = EQUIVALENT) -> FinalistReport | None:
    """Intervals, the leader, and the winner; None when no finalist measured in any round."""
    measured = [f for f in finalists if rounds.get(f.spec_key)]
    if not measured:
        return None
    mean_req = {f.spec_key: statistics.fmean(x.request_s for x in rounds[f.spec_key])
                for f in measured}
    verified = {f.spec_key: all(x.verified for x in rounds[f.spec_key]) for f in measured}
    # An unproven re-measurement never leads a proven one.
    leader = min(measured, key=lambda f: (not verified[f.spec_key], mean_req[f.spec_key]))
    figures = [_figures(f, rounds[f.spec_key], rounds[leader.spec_key], level,
                        verified[f.spec_key]) for f in measured]
    figures.sort(key=lambda x: (not x.verified, x.request_seconds.value))
    specs = {f.spec_key: f.spec for f in measured}
    lead = figures[0]
    common: dict[str, Any] = dict(study=study, level=level, finalists=figures, leader_trial=lead.trial,
                  equivalent=equivalent, measured_at=now())
    others = [f for f in figures[1:] if f.verified >= lead.verified]
    if not others:
        reason = "the only finalist" if len(figures) == 1 else "the only proven finalist"
        return FinalistReport(**common, winner_trial=lead.trial, tie=False, reason=reason)
    # One round gives no interval: nothing is slower or equivalent beyond it.
    paired_ok = [f for f in others if f.rounds >= 2 and lead.rounds >= 2]
    slower = [f for f in paired_ok if f.ratio_to_leader.low > 1.0]
    same = [f for f in paired_ok if f not in slower and f.ratio_to_leader.high <= 1 + equivalent]
    undecided = [f for f in others if f not in slower and f not in same]
    band = f"{level:.0%} interval of the ratio"
    if same:
        winner = min([lead, *same], key=lambda f: _lightness(f, specs[f.spec_key]))
        names = ", ".join(f"#{f.trial}" for f in same)
        reason = (f"tie: {names} within {equivalent:.0%} of the fastest, #{lead.trial} ({band} "
                  f"at most {1 + equivalent:.2f}); #{winner.trial} is the lighter config (GPU "
                  "memory, then kernel build, then speed)")
        return FinalistReport(**common, winner_trial=winner.trial, tie=True, reason=reason,
                              undecided=[f.trial for f in undecided])
    if undecided:
        names = ", ".join(f"#{f.trial}" for f in undecided)
        reason = (f"#{lead.trial} has the fastest mean; {names} neither slower beyond the {band} "
                  f"nor proven within {equivalent:.0%} after {lead.rounds} rounds: the fastest "
                  "mean is kept")
        return FinalistReport(**common, winner_trial=lead.trial, tie=False, reason=reason,
                              undecided=[f.trial for f in undecided])
    runner_up = slower[0]
    gap = (runner_up.ratio_to_leader.value - 1) * 100
    reason = (f"#{lead.trial} is faster than the runner-up #{runner_up.trial} by {gap:.1f}% "
              f"({band} {runner_up.ratio_to_leader.low:.3f}-"
              f"{runner_up.ratio_to_leader.high:.3f}, above 1)")
    return FinalistReport(**common, winner_trial=lead.trial, tie=False, reason=reason)
