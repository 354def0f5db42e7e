"""Comparison rows from stored trial records: one row per record, the usable ones (measured and
proven where they were asked to run) ranked first by request time, then measured-but-unproven
ones, then the trials that never measured. Reads records only; rendering is the exporters'
(``tuner.reports.exporters``) and the views' (``tuner.reports.views``), which import this module, never the
other way round."""

from __future__ import annotations

from typing import Any

from tuner.results.records import TrialRecord, TrialState, WorkerDrift
from tuner.results.stability import instability
from tuner.search.space import is_baseline_context
from tuner.settings import SETTINGS, Setting, optional_columns, report_cells, undeployable

__all__ = ["COLUMNS", "baseline_for", "is_baseline", "order", "row", "rows", "speedup",
           "summary"]

# The settings' columns come from tuner/settings.py: the always-shown ones here, the others
# (after them, before "space") only in reports where some trial is off their default.
COLUMNS: tuple[str, ...] = (
    "rank", "trial", *(s.column for s in SETTINGS if s.shown), "space",
    "pp_tps", "pp_spread_pct", "tg_tps", "tg_spread_pct", "request_s", "gpu_mib",
    "state", "verified", "why",
)
SPEEDUP = "speedup_vs_baseline"  # added after request_s when any record has a baseline
WHY_MAX = 160


def order(records: list[TrialRecord]) -> list[TrialRecord]:
    usable = sorted((r for r in records if r.usable), key=lambda r: (r.objective, r.number))
    unproven = sorted(
        (r for r in records if r.state is TrialState.COMPLETE and not r.usable),
        key=lambda r: (r.objective is None, r.objective or 0.0, r.number),
    )
    rest = sorted((r for r in records if r.state is not TrialState.COMPLETE),
                  key=lambda r: r.number)
    return usable + unproven + rest


def is_baseline(record: TrialRecord) -> bool:
    """Measured at llama-cpp-python's defaults (n_batch 512, n_ubatch 512, no flash attention,
    f16 cache), whatever the thread count."""
    return (record.state is TrialState.COMPLETE and record.objective is not None
            and is_baseline_context(record.spec.context))


def baseline_for(record: TrialRecord, records: list[TrialRecord]) -> TrialRecord | None:
    """The baseline trial on the same build and GPU layer count; among several, the one sharing
    this record's threads and CUDA graphs setting, then the earliest."""
    ms = record.spec.model
    same = [b for b in records if is_baseline(b) and b.spec.model.build == ms.build
            and b.spec.model.n_gpu_layers == ms.n_gpu_layers]
    if not same:
        return None
    return min(same, key=lambda b: (
        b.spec.context.n_threads != record.spec.context.n_threads,
        b.spec.model.cuda_graphs != ms.cuda_graphs,
        b.number,
    ))


def speedup(record: TrialRecord, records: list[TrialRecord]) -> float | None:
    """Baseline request seconds / this record's: above 1 is faster than the defaults."""
    base = baseline_for(record, records)
    if base is None or not record.objective or base.objective is None:
        return None
    return base.objective / record.objective


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def _why(record: TrialRecord, drifts: list[WorkerDrift] | None = None) -> str:
    parts: list[str] = []
    if record.state is not TrialState.COMPLETE:
        text = record.error or (f"signal {record.signal}" if record.signal else record.state.value)
        parts.append(text.strip().splitlines()[0] if text.strip() else record.state.value)
    elif not record.verification.verified:
        v = record.verification
        parts.append(v.reasons[0] if v.reasons else (v.summary or "not verified"))
    else:
        parts += undeployable(record.spec)
    parts += instability(record, drifts)
    if record.alongside_build:
        parts.append(f"measured beside the {', '.join(record.alongside_build)} compile: a "
                     "nomination, its leaders measured again after it")
    why = "; ".join(parts)
    return why if len(why) <= WHY_MAX else why[: WHY_MAX - 1] + "…"


def row(record: TrialRecord, rank: int | None, drifts: list[WorkerDrift] | None = None,
        extra: list[Setting] | tuple[Setting, ...] = ()) -> dict[str, Any]:
    """One record's cells; ``extra``: settings whose optional columns the report shows."""
    m = record.measurement
    return {
        "rank": rank,
        "trial": record.number,
        **report_cells(record.spec, extra),
        # The search space the trial was planned under: a study whose space changed keeps the
        # older trials as history, and this says which is which.
        "space": record.space_id[:8] if record.space_id else None,
        "pp_tps": _round(m.pp_tps.median, 1) if m else None,
        "pp_spread_pct": _round(m.pp_tps.rel_spread * 100, 1) if m else None,
        "tg_tps": _round(m.tg_tps.median, 1) if m and m.tg_tps else None,
        "tg_spread_pct": _round(m.tg_tps.rel_spread * 100, 1) if m and m.tg_tps else None,
        "request_s": _round(m.request_seconds.median, 4) if m else None,
        "gpu_mib": _round(m.gpu_peak_mib, 0) if m else None,
        "state": record.state.value,
        "verified": "yes" if record.state is TrialState.COMPLETE and record.verification.verified
        else "no",
        "why": _why(record, drifts),
    }


def ran_on(record: TrialRecord) -> str | None:
    """The host (and the GPUs its workers were given) that measured a trial."""
    env = record.environment
    if env is None:
        return None
    gpus = f" gpu {env.cuda_visible_devices}" if env.cuda_visible_devices else ""
    return env.hostname + gpus


def rows(records: list[TrialRecord],
         drifts: list[WorkerDrift] | None = None) -> list[dict[str, Any]]:
    """One row per record, in report order (see the module docstring). Blank cells are None.
    The speedup column appears, after request_s, only when some baseline trial was measured;
    the ``ran_on`` column, after trial, only when trials ran on more than one host or GPU set
    (a study shared by several sweeps through one storage).
    ``drifts`` (the study's drift sentinel records) mark the trials of a drifting worker."""
    ordered = order(records)
    with_speedup = any(is_baseline(r) for r in records)
    with_host = len({ran_on(r) for r in records}) > 1
    extra = optional_columns([r.spec for r in records])
    out: list[dict[str, Any]] = []
    rank = 0
    for r in ordered:
        if r.usable:
            rank += 1
        cells = row(r, rank if r.usable else None, drifts, extra)
        if with_speedup:
            cells = _insert_after(cells, "request_s", SPEEDUP, _round(speedup(r, records), 3))
        if with_host:
            cells = _insert_after(cells, "trial", "ran_on", ran_on(r))
        out.append(cells)
    return out


def _insert_after(cells: dict[str, Any], after: str, key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cells.items():
        out[k] = v
        if k == after:
            out[key] = value
    return out


def summary(records: list[TrialRecord]) -> dict[str, Any]:
    """Counts per state, how many were verified and usable, and the best usable trial's key
    figures (None when no trial is usable)."""
    states = {s.value: 0 for s in TrialState}
    for r in records:
        states[r.state.value] += 1
    usable = sorted((r for r in records if r.usable), key=lambda r: (r.objective, r.number))
    best: dict[str, Any] | None = None
    if usable:
        b = usable[0]
        m = b.measurement
        best = {
            "trial": b.number,
            "trial_id": b.trial_id,
            "spec_key": b.spec_key,
            "label": b.spec.label(),
            "build": b.spec.model.build,
            "request_s": b.objective,
            "pp_tps": m.pp_tps.median if m else None,
            "tg_tps": m.tg_tps.median if m and m.tg_tps else None,
            "gpu_mib": m.gpu_peak_mib if m else None,
            "speedup_vs_baseline": speedup(b, records),
            "unstable": bool(m and m.unstable),
        }
    return {
        "total": len(records),
        "states": states,
        "verified": sum(1 for r in records
                        if r.state is TrialState.COMPLETE and r.verification.verified),
        "usable": len(usable),
        "best": best,
    }
