"""Why a measured trial's figures may not be trusted as they stand: repetitions far apart, a GPU
that throttled during the timed work, or a worker whose speed drifted over its life (the drift
sentinel re-measures each worker's first trial at its end). Flagged, not hidden (pyperf)."""

from __future__ import annotations

from tuner.results.records import TrialRecord, WorkerDrift, widest_spread


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:+.0f}%"


def drift_reason(d: WorkerDrift) -> str:
    return (f"worker {d.worker_id} drifted over its life (pp {_pct(d.pp_drift)}, tg "
            f"{_pct(d.tg_drift)}, noise {d.noise * 100:.0f}%)")


def drifted_workers(drifts: list[WorkerDrift]) -> dict[str, WorkerDrift]:
    """The workers with a significant drift, by worker id."""
    return {d.worker_id: d for d in drifts if d.significant}


def _drift_of(record: TrialRecord, drifts: list[WorkerDrift]) -> WorkerDrift | None:
    for d in drifts:
        if not d.significant or d.study != record.study:
            continue
        if record.worker_id is not None:
            if d.worker_id == record.worker_id:
                return d
        elif record.number in d.trials:  # records written before worker ids were kept
            return d
    return None


def instability(record: TrialRecord, drifts: list[WorkerDrift] | None = None) -> list[str]:
    """Every reason this trial's measurement is unstable, in words with the fix; [] if none."""
    m = record.measurement
    if m is None:
        return []
    out: list[str] = []
    if m.unstable:
        spread = widest_spread(m.request_seconds, m.pp_tps, m.tg_tps)
        out.append(f"unstable: repetitions spread {spread * 100:.0f}% (rerun on a quiet machine)")
    if m.throttled:
        reasons: list[str] = []
        if m.clocks is not None:
            for reading in (m.clocks.start, m.clocks.end):
                reasons += [r for r in reading.throttle_reasons if r not in reasons]
        out.append("throttled: " + (", ".join(reasons) or "a throttle reason was active")
                   + " (check cooling and power limits)")
    d = _drift_of(record, drifts or [])
    if d is not None:
        out.append("unstable: " + drift_reason(d))
    return out


def clock_range(record: TrialRecord) -> str | None:
    """The SM clock at the start and end of the timed work, e.g. '1980->1755 MHz'."""
    m = record.measurement
    if m is None or m.clocks is None:
        return None
    a, b = m.clocks.start.sm_clock_mhz, m.clocks.end.sm_clock_mhz
    if a is None and b is None:
        return None
    return f"{a if a is not None else '?'}->{b if b is not None else '?'} MHz"
