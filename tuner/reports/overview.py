"""The answer a report leads with: which settings won and how sure that is (the finalist
re-measurement's interval when there is one, else the winning trial's repetitions), the
runner-up and the gap, llama-cpp-python's defaults and the gain over them, whether the winner's
placement was proven and why not, what each setting did, and which trials to distrust.
Decisions only; ``tuner.reports.views`` and ``tuner.reports.htmlreport`` show them."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from tuner.builds.catalog import INSTALLED
from tuner.deploy.servicecompare import lines, raw_of, rows
from tuner.reports.analysis import EffectRow, effects, importance
from tuner.reports.offloadview import offload_lines
from tuner.reports.rows import baseline_for, is_baseline, order
from tuner.results.breakdown import TokenBreakdown
from tuner.results.records import (
    ConfirmedFigures,
    FinalistFigures,
    FinalistReport,
    Interval,
    ServedFigures,
    TrialRecord,
    TrialState,
    WorkerDrift,
)
from tuner.results.stability import instability
from tuner.search.pareto import front as pareto_front
from tuner.specs import Frozen


class Pick(Frozen):
    """One trial as the overview shows it; ``request_s`` holds its interval and ``how`` says
    what that interval is."""

    trial: int
    label: str
    request_s: Interval
    how: str
    pp_tps: float | None
    tg_tps: float | None
    gpu_mib: float | None
    verified: bool
    proof: str  # the verification summary, or why it was not verified
    remeasured: bool


class Overview(Frozen):
    study: str
    device: str
    gpu: str | None
    llama_cpp_python: str | None
    model: str | None
    workload: str
    total: int
    states: dict[str, int]
    verified: int
    winner: Pick | None
    winner_note: str
    runner_up: Pick | None
    gap: Interval | None  # runner-up request time / winner's
    gap_beyond_noise: bool | None
    gap_verdict: str | None  # the gap in words
    tie: bool = False
    undecided: bool = False  # finalists neither slower nor proven equivalent: fastest kept
    tie_reason: str | None = None
    baseline: Pick | None
    gain: float | None  # baseline request time / winner's: above 1 is faster than the defaults
    pp_gain: float | None
    no_winner_reason: str | None
    served: str | None = None  # the winner through llama_cpp.server, and its gap to the raw loop
    breakdown: TokenBreakdown | None = None  # where each ms of the winner's served token goes
    breakdown_note: str | None = None  # why there is no breakdown, when one was asked
    # Both deploy targets side by side and which to run (tuner/deploy/servicecompare.py); empty
    # where the sweep did not serve the winner through llama-server.
    services: list[str] = []
    front: list[Pick] = []  # the Pareto front (tuner/search/pareto.py), when it holds a trade-off
    confirmed: list[ConfirmedFigures] = []  # the search's leaders over processes (finalists')
    offload: list[str] = []  # a partial-offload winner: plan vs measured, why fewer layers
    warnings: list[str]
    effects: list[EffectRow]
    importance: dict[str, float]


def _from_record(r: TrialRecord, remeasured: bool = False) -> Pick:
    m = r.measurement
    assert m is not None and r.objective is not None
    reps = len(m.request_seconds.samples)
    v = r.verification
    return Pick(
        trial=r.number, label=r.spec.label(),
        request_s=Interval(value=r.objective, low=m.request_seconds.min,
                           high=m.request_seconds.max, level=1.0),
        how=f"range of {reps} repetition{'s' if reps != 1 else ''}",
        pp_tps=m.pp_tps.median, tg_tps=m.tg_tps.median if m.tg_tps else None,
        gpu_mib=m.gpu_peak_mib, verified=r.usable,
        proof=v.summary if v.verified else (v.reasons[0] if v.reasons else "not verified"),
        remeasured=remeasured,
    )


def _from_finalist(f: FinalistFigures, rec: TrialRecord | None, level: float) -> Pick:
    proof = "verified in the re-measurement" if f.verified else "not verified"
    if rec is not None:
        proof = rec.verification.summary if rec.verification.verified and f.verified else (
            (rec.verification.reasons or [proof])[0])
    return Pick(
        trial=f.trial, label=f.label, request_s=f.request_seconds,
        how=f"{level * 100:.0f}% interval, {f.rounds} fresh workers, {f.samples} samples",
        pp_tps=f.pp_tps.value, tg_tps=f.tg_tps.value if f.tg_tps else None,
        gpu_mib=f.gpu_peak_mib, verified=f.verified, proof=proof, remeasured=True,
    )


def _ratio(slow: Interval, fast: Interval) -> Interval:
    """slow / fast with the widest interval the two allow (conservative)."""
    # An interval cut at zero (two rounds, a wide spread) leaves the ratio unbounded above.
    high = slow.high / fast.low if fast.low > 0 else math.inf
    return Interval(value=slow.value / fast.value, low=slow.low / fast.high,
                    high=high, level=min(slow.level, fast.level))


def _gap_words(gap: Interval | None) -> str | None:
    """The runner-up's request time against the winner's, e.g. '1.021x the winner's time
    [1.017-1.033]: slower beyond the noise'. A runner-up faster by its point estimate (the
    winner was picked on a tie) is said so."""
    if gap is None:
        return None
    span = f"[{gap.low:.3f}-{gap.high:.3f}]"
    if gap.value >= 1.0:
        verdict = "slower beyond the noise" if gap.low > 1.0 else "within the noise"
        return f"{gap.value:.3f}x the winner's time {span}: {verdict}"
    verdict = "faster beyond the noise" if gap.high < 1.0 else "not beyond the noise"
    return f"{gap.value:.3f}x the winner's time {span}: faster by its point estimate, {verdict}"


def _workload(records: list[TrialRecord]) -> str:
    wl = records[0].workload
    return (f"{wl.prompt_tokens}-token prompt + {wl.gen_tokens} generated tokens, n_ctx "
            f"{wl.n_ctx}, {wl.repetitions} repetitions after {wl.warmup} warm-up")


def _no_winner_reason(records: list[TrialRecord]) -> str:
    complete = [r for r in records if r.state is TrialState.COMPLETE]
    if not records:
        return "no trial stored yet"
    if not complete:
        common = Counter(r.state.value for r in records).most_common(1)[0]
        return f"no trial measured ({common[1]} {common[0]})"
    reasons = Counter((r.verification.reasons or ["not verified"])[0] for r in complete
                      if not r.verification.verified)
    if not reasons:
        return "no trial has a request time"
    why, n = reasons.most_common(1)[0]
    return f"no trial verified; most often: {why} ({n} of {len(complete)} measured)"


STOCK_BUILDS = (INSTALLED, "default")  # what `pip install llama-cpp-python` gives


def stock_baseline(winner: TrialRecord, records: list[TrialRecord]) -> TrialRecord | None:
    """The trial at llama-cpp-python's defaults a user starts from: on the stock build (the
    installed package, or the plain CUDA build) with the winner's GPU layers when one was
    measured, else the defaults on the winner's own build."""
    stock = [b for b in records if is_baseline(b) and b.spec.model.build in STOCK_BUILDS
             and b.spec.model.device == winner.spec.model.device
             and b.spec.model.n_gpu_layers == winner.spec.model.n_gpu_layers]
    if stock:
        return min(stock, key=lambda b: (b.spec.model.build != INSTALLED,
                                         b.spec.context.n_threads != winner.spec.context.n_threads,
                                         b.number))
    return baseline_for(winner, records)


def _served_line(finalists: FinalistReport | None,
                 by_number: dict[int, TrialRecord]) -> str | None:
    """"served: ttft 0.120 s ..., request 0.863 s [server, 5 requests]; generation 170.7 vs
    312.8 t/s raw (-45%)": the winner's served figures next to its raw ones, named."""
    if finalists is None:
        return None
    win = next((f for f in finalists.finalists if f.trial == finalists.winner_trial), None)
    if win is None or not win.served:
        return None
    if "error" in win.served:
        return f"not served: {win.served['error']}"
    fig = ServedFigures.model_validate(win.served)
    line = fig.summary() + (f", server threads {fig.n_threads}" if fig.n_threads else "")
    # The raw figure the winner line shows: the finalists' re-measurement, not the search's.
    raw = win.tg_tps.value if win.tg_tps is not None else None
    if raw and fig.gen_tps is not None:
        line += (f"; generation {fig.gen_tps.median:.1f} t/s served vs {raw:.1f} t/s raw "
                 f"({(fig.gen_tps.median / raw - 1) * 100:+.0f}%)")
    return line


def _machine_load(finalists: FinalistReport | None) -> list[str]:
    """The sweep's line on other processes' CPU time, where it kept one that says so."""
    load = finalists.machine_load if finalists is not None else None
    return [load.line()] if load is not None and load.noted else []


def _services(finalists: FinalistReport | None, by_number: dict[int, TrialRecord]) -> list[str]:
    if finalists is None or finalists.llama_server is None:
        return []
    win = next((f for f in finalists.finalists if f.trial == finalists.winner_trial), None)
    rec = by_number.get(finalists.winner_trial)
    raw = raw_of(finalists, finalists.winner_trial, rec.measurement if rec else None)
    return lines(rows(win.served if win else None, finalists.llama_server, raw),
                 finalists.llama_server_flags)


@dataclass(frozen=True)
class _Decision:
    """Which trial won, the runner-up and their gap, and how the choice was made."""

    note: str
    winner: Pick | None = None
    win_rec: TrialRecord | None = None
    runner: Pick | None = None
    gap: Interval | None = None
    tie: bool = False
    tie_reason: str | None = None
    undecided: bool = False


def _finalist_decision(finalists: FinalistReport,
                       by_number: dict[int, TrialRecord]) -> _Decision:
    """The finalist re-measurement's winner, its closest rival and the gap between them."""
    level = finalists.level
    w = {f.trial: f for f in finalists.finalists}[finalists.winner_trial]
    runner = gap = None
    others = sorted((f for f in finalists.finalists if f.trial != w.trial),
                    key=lambda f: f.request_seconds.value)
    if others:
        r2 = others[0]
        runner = _from_finalist(r2, by_number.get(r2.trial), level)
        gap = (r2.ratio_to_leader if w.trial == finalists.leader_trial
               else _ratio(r2.request_seconds, w.request_seconds))
    return _Decision(
        note=(f"re-measured with {len(finalists.finalists)} finalists in fresh workers "
              f"({finalists.measured_at})"),
        winner=_from_finalist(w, by_number.get(w.trial), level), win_rec=by_number.get(w.trial),
        runner=runner, gap=gap, tie=finalists.tie, tie_reason=finalists.reason,
        undecided=bool(finalists.undecided))


def _search_decision(records: list[TrialRecord]) -> _Decision:
    """Without a finalist report: the search's best usable trial and its second."""
    note = ("best search trial; not re-measured (no finalist report), so its figures carry "
            "the search's noise and the winner's curse")
    ranked = [r for r in order(records) if r.usable]
    if not ranked:
        return _Decision(note=note)
    winner = _from_record(ranked[0])
    runner = _from_record(ranked[1]) if len(ranked) > 1 else None
    gap = _ratio(runner.request_s, winner.request_s) if runner is not None else None
    return _Decision(note=note, winner=winner, win_rec=ranked[0], runner=runner, gap=gap)


def _gains(base: TrialRecord | None, winner: Pick | None) -> tuple[float | None, float | None]:
    """The winner's request-time and prompt-speed gains over the defaults' trial ``base``."""
    gain = pp_gain = None
    if base is not None and winner is not None and base.objective:
        gain = base.objective / winner.request_s.value
        bm = base.measurement
        if bm is not None and winner.pp_tps and bm.pp_tps.median:
            pp_gain = winner.pp_tps / bm.pp_tps.median
    return gain, pp_gain


def _breakdown(finalists: FinalistReport | None,
               winner: Pick | None) -> tuple[TokenBreakdown | None, str | None]:
    """The winner's served-token breakdown (one of another trial is left out), or why none."""
    if finalists is None:
        return None, None
    bd = finalists.breakdown
    fits = bd is not None and bd.trial == (winner.trial if winner else None)
    return (bd if fits else None), finalists.breakdown_error


def overview(study: str, records: list[TrialRecord], finalists: FinalistReport | None = None,
             drifts: list[WorkerDrift] | None = None) -> Overview:
    """The decision and its evidence for one study's records (see the module docstring)."""
    by_number = {r.number: r for r in records}
    env = next((r.environment for r in records if r.environment is not None), None)
    decided = finalists if finalists is not None and any(
        f.trial == finalists.winner_trial for f in finalists.finalists) else None
    d = (_finalist_decision(decided, by_number) if decided is not None
         else _search_decision(records))
    base = stock_baseline(d.win_rec, records) if d.win_rec is not None else None
    gain, pp_gain = _gains(base, d.winner)
    states = Counter(r.state.value for r in records)
    front = pareto_front(records)
    breakdown, breakdown_note = _breakdown(decided, d.winner)
    return Overview(
        breakdown=breakdown, breakdown_note=breakdown_note,
        services=_services(decided, by_number), served=_served_line(decided, by_number),
        confirmed=finalists.confirmed if finalists is not None else [],
        front=[_from_record(r) for r in front] if len(front) > 1 else [],
        study=study, device=records[0].spec.model.device if records else "unknown",
        gpu=(env.gpus[0].get("name") if env and env.gpus else None),
        llama_cpp_python=env.llama_cpp_python if env else None,
        model=env.model_path if env else None,
        workload=_workload(records) if records else "",
        total=len(records), states={s.value: states.get(s.value, 0) for s in TrialState},
        verified=sum(1 for r in records if r.state is TrialState.COMPLETE
                     and r.verification.verified),
        winner=d.winner, winner_note=d.note if d.winner else "", runner_up=d.runner, gap=d.gap,
        gap_beyond_noise=None if d.gap is None else (d.gap.low > 1.0 or d.gap.high < 1.0),
        gap_verdict=_gap_words(d.gap),
        tie=d.tie, tie_reason=d.tie_reason, undecided=d.undecided,
        baseline=_from_record(base) if base is not None else None,
        gain=gain, pp_gain=pp_gain,
        no_winner_reason=None if d.winner else _no_winner_reason(records),
        # the machine's load first: it bears on every figure below, and the list is cut
        warnings=_machine_load(finalists) + [f"#{r.number} {r.spec.label()}: {why}"
                                             for r in order(records)
                                             for why in instability(r, drifts)],
        effects=effects(records), importance=importance(records),
        offload=offload_lines(d.win_rec, records),
    )
