"""Two studies side by side (other builds, machines, models or tuner versions): their winners'
figures and every setting both measured, with the ratio B / A and whether the difference
exceeds the figures' intervals (the finalist re-measurement's when there is one, else the
range of the trial's repetitions). Rows are plain dicts, so every exporter can render them."""

from __future__ import annotations

from typing import Any

from tuner.reports.overview import overview
from tuner.reports.rows import order
from tuner.results.records import FinalistReport, Interval, Stat, TrialRecord, WorkerDrift
from tuner.specs import Frozen

COMPARE_COLUMNS = ("what", "settings", "a", "a_range", "b", "b_range", "b_over_a", "beyond_noise")
METRICS = (("request_s", "request s"), ("pp_tps", "prompt t/s"), ("tg_tps", "gen t/s"),
           ("gpu_mib", "GPU MiB"))


class Side(Frozen):
    """One study of a comparison: its name and where it came from."""

    name: str
    source: str
    gpu: str | None
    llama_cpp_python: str | None
    model: str | None
    trials: int
    winner: str | None


class Comparison(Frozen):
    a: Side
    b: Side
    rows: list[dict[str, Any]]


def _iv(stat: Stat | None) -> Interval | None:
    return None if stat is None else Interval(value=stat.median, low=stat.min, high=stat.max,
                                              level=1.0)


def _figures(r: TrialRecord, fin: FinalistReport | None) -> dict[str, Interval | None]:
    if fin is not None:
        for f in fin.finalists:
            if f.trial == r.number:
                return {"request_s": f.request_seconds, "pp_tps": f.pp_tps, "tg_tps": f.tg_tps,
                        "gpu_mib": _point(f.gpu_peak_mib)}
    m = r.measurement
    assert m is not None
    return {"request_s": _iv(m.request_seconds), "pp_tps": _iv(m.pp_tps), "tg_tps": _iv(m.tg_tps),
            "gpu_mib": _point(m.gpu_peak_mib)}


def _point(x: float | None) -> Interval | None:
    return None if x is None else Interval(value=x, low=x, high=x, level=1.0)


def _row(what: str, settings: str, a: Interval | None, b: Interval | None) -> dict[str, Any]:
    def rng(iv: Interval | None) -> str | None:
        if iv is None or iv.low == iv.high:
            return None
        return f"{iv.low:.4g}-{iv.high:.4g}"

    ratio = b.value / a.value if a and b and a.value else None
    beyond = None
    if a is not None and b is not None and (a.low != a.high or b.low != b.high):
        beyond = "yes" if (b.low > a.high or b.high < a.low) else "no"
    return {"what": what, "settings": settings,
            "a": None if a is None else round(a.value, 4), "a_range": rng(a),
            "b": None if b is None else round(b.value, 4), "b_range": rng(b),
            "b_over_a": None if ratio is None else float(f"{ratio:.4g}"), "beyond_noise": beyond}


def compare(a: tuple[str, str, list[TrialRecord], FinalistReport | None, list[WorkerDrift]],
            b: tuple[str, str, list[TrialRecord], FinalistReport | None, list[WorkerDrift]]
            ) -> Comparison:
    """``a`` and ``b`` are (name, source, records, finalists, drifts) of each study."""
    sides, winners = [], []
    for name, source, records, fin, drifts in (a, b):
        ov = overview(name, records, fin, drifts)
        by_number = {r.number: r for r in records}
        win = by_number.get(ov.winner.trial) if ov.winner else None
        winners.append((win, fin))
        sides.append(Side(name=name, source=source, gpu=ov.gpu,
                          llama_cpp_python=ov.llama_cpp_python, model=ov.model,
                          trials=len(records), winner=ov.winner.label if ov.winner else None))
    rows: list[dict[str, Any]] = []
    (wa, fa), (wb, fb) = winners
    if wa is not None and wb is not None:
        figs_a, figs_b = _figures(wa, fa), _figures(wb, fb)
        same = wa.spec.label() == wb.spec.label()
        for key, label in METRICS:
            rows.append(_row(f"winner {label}", wa.spec.label() if same else
                             f"A: {wa.spec.label()} / B: {wb.spec.label()}",
                             figs_a[key], figs_b[key]))
    best_b: dict[str, TrialRecord] = {}
    for r in order(b[2]):
        if r.measurement is not None and r.objective is not None:
            best_b.setdefault(r.spec.label(), r)
    seen: set[str] = set()
    for r in order(a[2]):
        label = r.spec.label()
        if r.measurement is None or r.objective is None or label in seen or label not in best_b:
            continue
        seen.add(label)
        rows.append(_row("request s", label, _figures(r, a[3])["request_s"],
                         _figures(best_b[label], b[3])["request_s"]))
    return Comparison(a=sides[0], b=sides[1], rows=rows)
