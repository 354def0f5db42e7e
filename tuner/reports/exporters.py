"""Report exporters: one per format behind one interface (``Exporter``), as hyperfine does. An
exporter renders the studies loaded by ``tuner.reports.studydata`` (one report) and two studies
compared (``tuner.reports.compare``) to text; ``tuner.reports.reporting`` only picks one:

- ``table`` (default): the overview of each study (``tuner.reports.views.overview_view``)
- ``trials``: every trial, cut to 100 columns (``tuner.reports.views.trials_view``)
- ``md``, ``csv``, ``json``: the report rows of every study (``tuner.reports.rows.rows``: dicts
  with the same keys, None for a blank cell), one line or object per trial
- ``html``: one self-contained page (``tuner.reports.htmlreport``)
- ``jsonl``: the export: every trial's full record, one per line (``tuner.results.store``)"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rich.console import Group, RenderableType
from rich.text import Text

from tuner.errors import BadInput
from tuner.reports.breakdowntext import breakdown_json, breakdown_md
from tuner.reports.compare import COMPARE_COLUMNS, Comparison
from tuner.reports.htmlreport import compare_html, study_html
from tuner.reports.overview import overview
from tuner.reports.roofline import Roofline, roofline
from tuner.reports.rows import COLUMNS, rows
from tuner.reports.studydata import StudyData
from tuner.reports.views import compare_view, overview_view, render_text, trials_view
from tuner.results.breakdown import TokenBreakdown
from tuner.results.store import export_jsonl
from tuner.settings import SETTINGS

Row = dict[str, Any]
NUMERIC = {"rank", "trial", *(s.column for s in SETTINGS if s.numeric), "pp_tps",
           "pp_spread_pct", "tg_tps", "tg_spread_pct", "request_s", "speedup_vs_baseline",
           "gpu_mib"}


@dataclass(frozen=True)
class Peaks:
    """Overrides for the roofline: peaks and the model file to count parameters from."""

    bandwidth_gbs: float | None = None
    tflops: float | None = None
    model_file: Path | None = None


NO_PEAKS = Peaks()  # no overrides

class Exporter(Protocol):
    """One report format: ``studies`` renders a report of one or more studies, ``compare`` two
    studies side by side (a format that cannot compare raises BadInput)."""

    name: str

    def studies(self, studies: list[StudyData], peaks: Peaks, width: int) -> str: ...

    def compare(self, c: Comparison, width: int) -> str: ...


def _roofline(s: StudyData, winner_trial: int | None, peaks: Peaks) -> Roofline | None:
    rec = next((r for r in s.records if r.number == winner_trial), None)
    if rec is None or rec.measurement is None:
        return None
    return roofline(rec, peak_bandwidth_gbs=peaks.bandwidth_gbs, peak_tflops=peaks.tflops,
                    model_file=peaks.model_file)


class _Terminal:
    """A rich view of every study, one after the other, as plain text for files and pipes (the
    CLI prints ``view`` itself on a terminal, in colour)."""

    name = ""

    def one(self, s: StudyData, peaks: Peaks) -> RenderableType:
        raise NotImplementedError

    def view(self, studies: list[StudyData], peaks: Peaks) -> RenderableType:
        parts: list[RenderableType] = []
        for i, s in enumerate(studies):
            if i:
                parts.append(Text(""))
            parts.append(self.one(s, peaks))
        return Group(*parts)

    def studies(self, studies: list[StudyData], peaks: Peaks, width: int) -> str:
        return render_text(self.view(studies, peaks), width)

    def compare(self, c: Comparison, width: int) -> str:
        return render_text(compare_view(c), width)


class OverviewExporter(_Terminal):
    """``table``: the answer of each study (winner, runner-up, baseline, proof, roofline)."""

    name = "table"

    def one(self, s: StudyData, peaks: Peaks) -> RenderableType:
        ov = overview(s.name, s.records, s.finalists, s.drifts)
        return overview_view(ov, _roofline(s, ov.winner.trial if ov.winner else None, peaks))


class TrialsExporter(_Terminal):
    """``trials``: every trial of each study, cut to 100 columns (compared: as ``table``)."""

    name = "trials"

    def one(self, s: StudyData, peaks: Peaks) -> RenderableType:
        return trials_view(rows(s.records, s.drifts), title=f"study {s.name}")


def _columns(rows: list[Row]) -> list[str]:
    return list(rows[0]) if rows else list(COLUMNS)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else str(value)
    return str(value)


class _Rows:
    """The report rows of every study (a ``study`` column first), in a text format."""

    name = ""
    with_breakdown = False  # whether the winner's per-token breakdown goes in too

    def render(self, rows: list[Row]) -> str:
        raise NotImplementedError

    def extra(self, s: StudyData, bd: TokenBreakdown | None) -> dict[int, Row]:
        """Fields added to a trial's row, by trial number."""
        return {}

    def section(self, study: str, bd: TokenBreakdown | None) -> str:
        """Text after the rows."""
        return ""

    def studies(self, studies: list[StudyData], peaks: Peaks, width: int) -> str:
        all_rows: list[Row] = []
        sections = ""
        for s in studies:
            bd = overview(s.name, s.records, s.finalists, s.drifts).breakdown \
                if self.with_breakdown else None
            extra = self.extra(s, bd)
            all_rows += [{"study": s.name, **r, **extra.get(r["trial"], {})}
                         for r in rows(s.records, s.drifts)]
            sections += self.section(s.name, bd)
        return self.render(all_rows) + sections

    def compare(self, c: Comparison, width: int) -> str:
        return self.render([{k: r[k] for k in COMPARE_COLUMNS} for r in c.rows])


class MarkdownExporter(_Rows):
    """A GitHub markdown table: header, alignment line, one line per row; then the winner's
    per-token breakdown."""

    name = "md"
    with_breakdown = True

    def render(self, rows: list[Row]) -> str:
        cols = _columns(rows)

        def line(cells: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

        out = [line(cols), "|" + "|".join("---:" if c in NUMERIC else "---" for c in cols) + "|"]
        out += [line([_cell(r.get(c)) for c in cols]) for r in rows]
        return "\n".join(out) + "\n"

    def section(self, study: str, bd: TokenBreakdown | None) -> str:
        return "" if bd is None else "\n" + breakdown_md(study, bd)


class CsvExporter(_Rows):
    """RFC 4180 CSV with a header line; blank cells are empty fields."""

    name = "csv"

    def render(self, rows: list[Row]) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=_columns(rows), lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if v is None else v for k, v in r.items()})
        return buf.getvalue()


class JsonExporter(_Rows):
    """The rows as a JSON list of objects (blank cells null), each with what the study's
    decision rests on (``decision_fields``) and the winner's with its per-token breakdown."""

    name = "json"
    with_breakdown = True

    def render(self, rows: list[Row]) -> str:
        return json.dumps(rows, indent=2) + "\n"

    def extra(self, s: StudyData, bd: TokenBreakdown | None) -> dict[int, Row]:
        out = decision_fields(s)
        if bd is not None:
            out[bd.trial] = {**out.get(bd.trial, {}), "breakdown": breakdown_json(bd)}
        return out


class HtmlExporter:
    """One self-contained page of one study, or of two compared."""

    name = "html"

    def studies(self, studies: list[StudyData], peaks: Peaks, width: int) -> str:
        if len(studies) != 1:
            names = ", ".join(s.name for s in studies)
            raise BadInput(f"an HTML report holds one study; found {len(studies)} ({names})",
                           "pick one with --study NAME")
        s = studies[0]
        ov = overview(s.name, s.records, s.finalists, s.drifts)
        roof = _roofline(s, ov.winner.trial if ov.winner else None, peaks)
        return study_html(ov, s.records, rows(s.records, s.drifts), roof, s.finalists, s.drifts)

    def compare(self, c: Comparison, width: int) -> str:
        return compare_html(c)


class JsonlExporter:
    """The export: every trial's full record, one JSON line each (what ``tuner report`` reads
    back by path)."""

    name = "jsonl"

    def studies(self, studies: list[StudyData], peaks: Peaks, width: int) -> str:
        return "".join(export_jsonl(s.records, s.finalists, s.drifts) for s in studies)

    def compare(self, c: Comparison, width: int) -> str:
        raise BadInput("--format jsonl exports a study's records; it does not compare two",
                       "export each study with tuner report --study NAME --format jsonl -o FILE")


EXPORTERS: dict[str, Exporter] = {e.name: e for e in (
    OverviewExporter(), TrialsExporter(), MarkdownExporter(), CsvExporter(), JsonExporter(),
    HtmlExporter(), JsonlExporter())}
FORMATS = tuple(EXPORTERS)
TERMINAL: dict[str, _Terminal] = {e.name: e for e in EXPORTERS.values() if isinstance(e, _Terminal)}


def exporter(fmt: str) -> Exporter:
    """The exporter of format ``fmt``; an unknown one is bad input."""
    found = EXPORTERS.get(fmt)
    if found is None:
        raise BadInput(f"unknown report format {fmt!r} (known: {', '.join(FORMATS)})")
    return found


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
