"""Every report format from loaded studies, as text (or, for the terminal, rich renderables):

- ``table`` (default): the overview of each study (``tuner.reports.views.overview_view``)
- ``trials``: every trial, cut to 100 columns (``tuner.reports.views.trials_view``)
- ``md``, ``csv``, ``json``: the report rows of every study (``tuner.reports.exporters``)
- ``html``: one self-contained page (``tuner.reports.htmlreport``)
- ``jsonl``: the export: every trial's full record, one per line (``tuner.results.store``)

and the same for two studies compared side by side. The CLI picks one and prints or writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from tuner.errors import BadInput
from tuner.reports.compare import COMPARE_COLUMNS, Comparison, compare
from tuner.reports.exporters import breakdown_json, breakdown_md, export
from tuner.reports.htmlreport import compare_html, study_html
from tuner.reports.overview import overview
from tuner.reports.roofline import Roofline, roofline
from tuner.reports.rows import rows
from tuner.reports.studydata import StudyData
from tuner.reports.views import WIDTH, compare_view, overview_view, render_text, trials_view
from tuner.results.store import export_jsonl

FORMATS = ("table", "trials", "md", "csv", "json", "html", "jsonl")
TERMINAL = ("table", "trials")


@dataclass(frozen=True)
class Peaks:
    """Overrides for the roofline: peaks and the model file to count parameters from."""

    bandwidth_gbs: float | None = None
    tflops: float | None = None
    model_file: Path | None = None


def _roofline(s: StudyData, winner_trial: int | None, peaks: Peaks) -> Roofline | None:
    rec = next((r for r in s.records if r.number == winner_trial), None)
    if rec is None or rec.measurement is None:
        return None
    return roofline(rec, peak_bandwidth_gbs=peaks.bandwidth_gbs, peak_tflops=peaks.tflops,
                    model_file=peaks.model_file)


def renderable(studies: list[StudyData], fmt: str, peaks: Peaks = Peaks()) -> RenderableType:
    """The terminal view (``table`` or ``trials``) of every study, one after the other."""
    parts: list[RenderableType] = []
    for i, s in enumerate(studies):
        if i:
            parts.append(Text(""))
        if fmt == "trials":
            parts.append(trials_view(rows(s.records, s.drifts), title=f"study {s.name}"))
        else:
            ov = overview(s.name, s.records, s.finalists, s.drifts)
            roof = _roofline(s, ov.winner.trial if ov.winner else None, peaks)
            parts.append(overview_view(ov, roof))
    return Group(*parts)


def report(studies: list[StudyData], fmt: str, peaks: Peaks = Peaks(),
           width: int = WIDTH) -> str:
    """The report of ``studies`` in format ``fmt`` as text (see the module docstring)."""
    if fmt not in FORMATS:
        raise BadInput(f"unknown report format {fmt!r} (known: {', '.join(FORMATS)})")
    if fmt in TERMINAL:
        return render_text(renderable(studies, fmt, peaks), width)
    if fmt == "jsonl":
        return "".join(export_jsonl(s.records, s.finalists, s.drifts) for s in studies)
    if fmt == "html":
        if len(studies) != 1:
            names = ", ".join(s.name for s in studies)
            raise BadInput(f"an HTML report holds one study; found {len(studies)} ({names})",
                           "pick one with --study NAME")
        s = studies[0]
        ov = overview(s.name, s.records, s.finalists, s.drifts)
        roof = _roofline(s, ov.winner.trial if ov.winner else None, peaks)
        return study_html(ov, s.records, rows(s.records, s.drifts), roof, s.finalists, s.drifts)
    all_rows: list[dict[str, Any]] = []
    sections: list[str] = []
    for s in studies:
        bd = overview(s.name, s.records, s.finalists, s.drifts).breakdown \
            if fmt in ("md", "json") else None
        decision = decision_fields(s) if fmt == "json" else {}
        for r in rows(s.records, s.drifts):
            r = {**r, **decision.get(r["trial"], {})}
            if fmt == "json" and bd is not None and r.get("trial") == bd.trial:
                r = {**r, "breakdown": breakdown_json(bd)}
            all_rows.append({"study": s.name, **r})
        if fmt == "md" and bd is not None:
            sections.append(breakdown_md(s.name, bd))
    return export(all_rows, fmt) + "".join("\n" + x for x in sections)


def decision_fields(s: StudyData) -> dict[int, dict[str, Any]]:
    """What the JSON report adds to each trial's row (by trial number): what the study's
    decision rests on beyond the table's cells: the trial's finalist figures with their
    intervals (``winner`` and the decision's reason on the winner), its figures over
    processes from the confirmation, its worker's drift check, the GPU clocks around its
    timed work and the machine and build it ran on."""
    fin = s.finalists
    finalists = {f.trial: f for f in fin.finalists} if fin else {}
    confirmed = {c.trial: c for c in fin.confirmed} if fin else {}
    drift = {d.worker_id: d for d in s.drifts}
    out: dict[int, dict[str, Any]] = {}
    for r in s.records:
        f, c = finalists.get(r.number), confirmed.get(r.number)
        d = drift.get(r.worker_id) if r.worker_id else None
        m, env = r.measurement, r.environment
        winner = fin is not None and fin.winner_trial == r.number
        out[r.number] = {
            "finalist": None if f is None else {
                **f.model_dump(mode="json"), "winner": winner,
                "decision": fin.reason if winner and fin is not None else None},
            "confirmed": None if c is None else c.model_dump(mode="json"),
            "worker_drift": None if d is None else d.model_dump(mode="json"),
            "clocks": None if m is None or m.clocks is None else m.clocks.model_dump(mode="json"),
            "environment": None if env is None else env.model_dump(mode="json"),
        }
    return out


def comparison(a: StudyData, b: StudyData) -> Comparison:
    return compare((a.name, str(a.source), a.records, a.finalists, a.drifts),
                   (b.name, str(b.source), b.records, b.finalists, b.drifts))


def compare_report(a: StudyData, b: StudyData, fmt: str, width: int = WIDTH) -> str:
    """Two studies side by side in format ``fmt`` (``trials`` shows the same as ``table``)."""
    if fmt not in FORMATS:
        raise BadInput(f"unknown report format {fmt!r} (known: {', '.join(FORMATS)})")
    if fmt == "jsonl":
        raise BadInput("--format jsonl exports a study's records; it does not compare two",
                       "export each study with tuner report --study NAME --format jsonl -o FILE")
    c = comparison(a, b)
    if fmt in TERMINAL:
        return render_text(compare_view(c), width)
    if fmt == "html":
        return compare_html(c)
    return export([{k: r[k] for k in COMPARE_COLUMNS} for r in c.rows], fmt)
