"""Report exporters: one per format behind one interface, as hyperfine does. Each renders the
rows of ``tuner.reports.rows.rows`` (dicts with the same keys, None for a blank cell) to text; the
``table`` format is the terminal's per-trial table (``tuner.reports.views.trials_view``) as plain
text, 100 columns wide."""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Protocol

from tuner.errors import BadInput
from tuner.reports.rows import COLUMNS
from tuner.reports.views import render_text, trials_view
from tuner.results.breakdown import ADDS, STAGES, TokenBreakdown
from tuner.settings import SETTINGS

Row = dict[str, Any]
NUMERIC = {"rank", "trial", *(s.column for s in SETTINGS if s.numeric), "pp_tps",
           "pp_spread_pct", "tg_tps", "tg_spread_pct", "request_s", "speedup_vs_baseline",
           "gpu_mib"}


class Exporter(Protocol):
    name: str

    def render(self, rows: list[Row]) -> str: ...


def _columns(rows: list[Row]) -> list[str]:
    return list(rows[0]) if rows else list(COLUMNS)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else str(value)
    return str(value)


class MarkdownExporter:
    """A GitHub markdown table: header, alignment line, one line per row."""

    name = "md"

    def render(self, rows: list[Row]) -> str:
        cols = _columns(rows)

        def line(cells: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

        out = [line(cols), "|" + "|".join("---:" if c in NUMERIC else "---" for c in cols) + "|"]
        out += [line([_cell(r.get(c)) for c in cols]) for r in rows]
        return "\n".join(out) + "\n"


class CsvExporter:
    """RFC 4180 CSV with a header line; blank cells are empty fields."""

    name = "csv"

    def render(self, rows: list[Row]) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=_columns(rows), lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if v is None else v for k, v in r.items()})
        return buf.getvalue()


class JsonExporter:
    """The rows as a JSON list of objects; blank cells are null."""

    name = "json"

    def render(self, rows: list[Row]) -> str:
        return json.dumps(rows, indent=2) + "\n"


class TableExporter:
    """The terminal's per-trial table as plain text (no colour), for files and pipes."""

    name = "table"

    def __init__(self, title: str | None = None, width: int = 100) -> None:
        self.title = title
        self.width = width

    def render(self, rows: list[Row]) -> str:
        return render_text(trials_view(rows, self.title), self.width)


EXPORTERS: dict[str, Exporter] = {
    e.name: e for e in (MarkdownExporter(), CsvExporter(), JsonExporter(), TableExporter())
}


def export(rows: list[Row], fmt: str) -> str:
    """Render ``rows`` in the format named ``fmt`` (md, csv, json, table)."""
    exporter = EXPORTERS.get(fmt)
    if exporter is None:
        raise BadInput(f"unknown report format {fmt!r} (known: {', '.join(sorted(EXPORTERS))})")
    return exporter.render(rows)


def breakdown_json(bd: TokenBreakdown) -> dict[str, Any]:
    """The per-token breakdown as the JSON report holds it on the winner's row: each measured
    stage's ms per token, what it adds and its share; the stages not measured with why."""
    return {
        "prompt_tokens": bd.prompt_tokens, "gen_tokens": bd.gen_tokens,
        "repetitions": bd.repetitions, "sampling": bd.sampling, "threads": bd.threads,
        "gpu_share": bd.gpu_share(),
        "stages": [sh.model_dump(mode="json") for sh in bd.shares()],
        "not_measured": {s.key: s.error for s in bd.stages if s.ms_per_token is None},
    }


def breakdown_md(study: str, bd: TokenBreakdown) -> str:
    """A markdown section: where each millisecond of the winner's served token goes."""
    out = [f"## Where each millisecond per token goes: {study}, #{bd.trial} {bd.label}", "",
           f"Depth {bd.prompt_tokens}, {bd.gen_tokens} tokens, {bd.repetitions} repetitions "
           f"each; server sampling {', '.join(f'{k} {v:g}' for k, v in bd.sampling.items())}.",
           "", "| stage | ms/token | range | adds ms | share | what it adds |",
           "|---|---:|---:|---:|---:|---|"]
    for sh in bd.shares():
        st = bd.stage(sh.key)
        rng = (f"{st.ms_per_token.min:.3f}-{st.ms_per_token.max:.3f}"
               if st and st.ms_per_token else "")
        share = f"{sh.share:.0%}" if sh.share is not None else ""
        out.append(f"| {sh.label} | {sh.ms_per_token:.3f} | {rng} | {sh.added_ms:+.3f} | "
                   f"{share} | {ADDS[sh.key]} |")
    out += [f"| {STAGES[s.key]} | | | | | not measured: {s.error} |" for s in bd.stages
            if s.ms_per_token is None]
    return "\n".join(out) + "\n"
