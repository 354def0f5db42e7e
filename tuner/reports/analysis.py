"""What each setting did, computed from stored trial records: the best request time at each value
of each swept setting (with spread), a variance decomposition of the request time over the
settings, and, with pandas, a frame of the measured trials and the Pareto front of prompt speed,
generation speed and GPU memory. Library code: the views and the HTML page only show these.

The terminal report needs only the effects and the decomposition, computed on plain rows: pandas
takes 0.35 s of CPU to import, more than the rest of a report, so only the HTML page and the
plots (which need a frame) load it."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tuner.results.records import TrialRecord
from tuner.settings import SETTINGS
from tuner.specs import Frozen, TrialSpec

if TYPE_CHECKING:  # pandas takes 0.35 s to import: only where a frame is built
    import pandas as pd

# The settings a sweep varies, as report columns: name -> value of a spec (tuner/settings.py).
DIMENSIONS: dict[str, Callable[[TrialSpec], Any]] = {
    s.name: s.analysis_value for s in SETTINGS if s.in_space}


def _measured(records: list[TrialRecord]) -> list[TrialRecord]:
    """The trials with figures: complete, with a request time."""
    return [r for r in records if r.measurement is not None and r.objective is not None]


def _ranked(records: list[TrialRecord]) -> list[TrialRecord]:
    """The verified measured trials when there are any (only they may be deployed), else every
    measured one: the population the effects, importance and Pareto front are computed on."""
    measured = _measured(records)
    return [r for r in measured if r.usable] or measured


def _groups(records: list[TrialRecord], dim: str) -> dict[Any, list[TrialRecord]]:
    """The trials by their value of ``dim`` in order of first appearance; a trial without a
    value is in no group."""
    out: dict[Any, list[TrialRecord]] = {}
    for r in records:
        if (v := DIMENSIONS[dim](r.spec)) is not None:
            out.setdefault(v, []).append(r)
    return out


def _swept(records: list[TrialRecord]) -> list[str]:
    """The settings that took more than one value among these trials."""
    return [d for d in DIMENSIONS if len(_groups(records, d)) > 1]


def frame(records: list[TrialRecord]) -> pd.DataFrame:
    """One row per measured trial (complete, with a request time): the settings, the figures
    and whether it was verified. Empty (with the columns) when nothing was measured."""
    cols = ["trial", *DIMENSIONS, "request_s", "req_min", "req_max", "pp_tps", "tg_tps",
            "gpu_mib", "verified", "depth"]
    data = []
    for r in _measured(records):
        m = r.measurement
        assert m is not None
        data.append({
            "trial": r.number, **{k: f(r.spec) for k, f in DIMENSIONS.items()},
            "request_s": r.objective, "req_min": m.request_seconds.min,
            "req_max": m.request_seconds.max, "pp_tps": m.pp_tps.median,
            "tg_tps": m.tg_tps.median if m.tg_tps else math.nan,
            "gpu_mib": m.gpu_peak_mib if m.gpu_peak_mib is not None else math.nan,
            "verified": r.usable, "depth": m.prompt_tokens,
        })
    import pandas as pd

    return pd.DataFrame(data, columns=cols)


def ranked_frame(records: list[TrialRecord]) -> pd.DataFrame:
    """``frame`` of the ranked population (``_ranked``)."""
    return frame(_ranked(records))


class EffectRow(Frozen):
    """One value of one setting: the best trial run with it and how the others spread."""

    setting: str
    value: str
    trials: int
    best_trial: int
    best_s: float
    best_rep_spread_pct: float  # (max - min) / median of the best trial's repetitions
    median_s: float  # over every trial with this value
    worst_s: float
    vs_best: float  # best_s / the best value's best_s (1.0 for the best value)


def _request_s(r: TrialRecord) -> float:
    assert r.objective is not None  # a measured trial (_measured)
    return r.objective


def _request_spread(r: TrialRecord) -> float:
    """The trial's request time, slowest repetition less fastest."""
    assert r.measurement is not None
    return r.measurement.request_seconds.max - r.measurement.request_seconds.min


def effects(records: list[TrialRecord]) -> list[EffectRow]:
    """For each swept setting, the best request time at each of its values (best value first),
    with the best trial's repetition spread and the median and worst over the other trials."""
    ranked = _ranked(records)
    out: list[EffectRow] = []
    for dim in _swept(ranked):
        groups = []
        for value, g in _groups(ranked, dim).items():
            best = min(g, key=_request_s)  # the first of equal ones
            groups.append((_request_s(best), value, g, best))
        groups.sort(key=lambda t: t[0])
        top = groups[0][0]
        for best_s, value, g, best in groups:
            times = [_request_s(r) for r in g]
            spread = _request_spread(best)
            out.append(EffectRow(
                setting=dim, value=str(value), trials=len(g), best_trial=best.number,
                best_s=best_s, best_rep_spread_pct=spread / best_s * 100 if best_s else 0.0,
                median_s=statistics.median(times), worst_s=max(times),
                vs_best=best_s / top if top else 1.0,
            ))
    return out


def importance(records: list[TrialRecord]) -> dict[str, float]:
    """How much of the variance of log(request time) each swept setting explains on its own
    (eta squared of a one-way decomposition: between-group over total sum of squares), largest
    first. The shares need not sum to 1: settings interact and the grid may be unbalanced. A
    first-order counterpart of optuna's fANOVA that needs only the records, not the study."""
    ranked = _ranked(records)
    if len(ranked) < 3:
        return {}
    y = {id(r): math.log(_request_s(r)) for r in ranked}
    mean = statistics.fmean(y.values())
    total = sum((v - mean) ** 2 for v in y.values())
    if total <= 0:
        return {}
    shares = {}
    for dim in _swept(ranked):
        between = 0.0
        for g in _groups(ranked, dim).values():
            between += len(g) * (statistics.fmean(y[id(r)] for r in g) - mean) ** 2
        shares[dim] = between / total
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


def pareto(records: list[TrialRecord]) -> pd.DataFrame:
    """The trials no other trial beats on every axis: higher prompt speed, higher generation
    speed and lower GPU memory (memory left out where it was not measured, e.g. on a CPU), by
    the search's own rule (tuner/search/pareto.py)."""
    import pandas as pd

    from tuner.search.pareto import AXES, non_dominated

    df = ranked_frame(records)
    points = {i: tuple(None if pd.isna(row[a.name]) else float(row[a.name]) for a in AXES)
              for i, row in df.iterrows()}
    keep = set(non_dominated(points))
    return df[df.index.isin(keep)].sort_values("pp_tps", ascending=False)
