"""Terminal views of a report, built as rich renderables that fit 100 columns: the overview (the
answer first, then what each setting did), the per-trial table with the columns that do not
vary dropped into its caption, and two studies side by side. Layout only: every figure and
verdict comes from ``tuner.reports.overview``, ``tuner.reports.rows``, ``tuner.reports.roofline``, ``tuner.reports.compare``."""

from __future__ import annotations

import io
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from tuner.reports.compare import Comparison
from tuner.reports.overview import Overview, Pick
from tuner.reports.roofline import Roofline
from tuner.results.records import widest_spread
from tuner.settings import SETTINGS

WIDTH = 100
WARNINGS_SHOWN = 8


def render_text(renderable: RenderableType, width: int = WIDTH) -> str:
    """Plain text (no colour) of a renderable laid out ``width`` columns wide."""
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, no_color=True, force_terminal=False,
            highlight=False, emoji=False).print(renderable)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"


def tps(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def secs(x: float | None) -> str:
    return "" if x is None else (f"{x:.4f}" if x < 10 else f"{x:,.2f}")


def _pick_line(p: Pick) -> str:
    iv = p.request_s
    figs = [f"prompt {tps(p.pp_tps)} t/s"]
    if p.tg_tps is not None:
        figs.append(f"generation {tps(p.tg_tps)} t/s")
    if p.gpu_mib is not None:
        figs.append(f"GPU {p.gpu_mib:,.0f} MiB")
    return (f"{secs(iv.value)} s/request [{secs(iv.low)}-{secs(iv.high)}, {p.how}]; "
            + ", ".join(figs))


def _grid() -> Table:
    g = Table.grid(padding=(0, 2))
    g.add_column(style="bold", no_wrap=True, min_width=10)
    g.add_column(overflow="fold", ratio=1)
    return g


def _roofline_lines(r: Roofline) -> list[str]:
    out = []
    if r.bandwidth_share is not None:
        out.append(f"generation: {r.achieved_gbs:,.4g} GB/s read = {r.bandwidth_share * 100:.0f}%"
                   f" of {r.peak_bandwidth_gbs:,.0f} GB/s ({r.peak_name or 'given'})")
    else:
        out.append(f"generation: no share ({r.peak_source})" if r.achieved_gbs else
                   "generation: not measured")
    if r.tflops_share is not None:
        out.append(f"prompt: {r.achieved_tflops:,.4g} TFLOPS = {r.tflops_share * 100:.1f}% of "
                   f"{r.peak_tflops:,.0f} TFLOPS")
    elif r.parameters is None:
        out.append(f"prompt: parameters {r.parameters_source}")
    else:
        out.append(f"prompt: {r.achieved_tflops or 0:,.4g} TFLOPS; no share ({r.peak_source})")
    return out


def overview_view(ov: Overview, roof: Roofline | None = None) -> RenderableType:
    """The default terminal view of one study."""
    body = _grid()
    _winner_rows(body, ov)
    _rival_rows(body, ov)
    if roof is not None:
        _block(body, "roofline", _roofline_lines(roof))
    _front_rows(body, ov)
    parts: list[RenderableType] = [_head_grid(ov), Text(""), body]
    if ov.confirmed:
        parts += [Text(""), confirmed_table(ov)]
    if ov.effects:
        parts += [Text(""), effects_table(ov)]
    if ov.importance:
        parts += [Text(""), Text("importance: the share of the variance of log(request time) "
                                 "each setting explains alone", style="italic"),
                  importance_view(ov.importance)]
    if ov.warnings:
        parts += [Text(""), Text(f"warnings ({len(ov.warnings)})", style="bold yellow"),
                  _warnings_grid(ov.warnings)]
    return Group(*parts)


def _block(body: Table, label: str, lines: list[str]) -> None:
    """Rows of ``lines`` under one label, shown on the first."""
    for i, line in enumerate(lines):
        body.add_row(label if i == 0 else "", line)


def _head_grid(ov: Overview) -> Table:
    """What was tuned: the study, machine, model, workload and the trials' states."""
    head = _grid()
    head.add_row("study", ov.study)
    machine = [f"device {ov.device}", f"GPU {ov.gpu}" if ov.gpu else "no GPU recorded",
               f"llama-cpp-python {ov.llama_cpp_python or '?'}"]
    head.add_row("machine", ", ".join(machine))
    if ov.model:
        head.add_row("model", ov.model)
    head.add_row("workload", ov.workload)
    failed = ", ".join(f"{n} {s}" for s, n in ov.states.items() if n and s != "complete")
    head.add_row("trials", f"{ov.total} stored: {ov.states.get('complete', 0)} measured, "
                 f"{ov.verified} verified" + (f"; {failed}" if failed else ""))
    return head


def _winner_rows(body: Table, ov: Overview) -> None:
    """The winner, its proof, and what the served, services, breakdown and offload say of it."""
    w = ov.winner
    if w is None:
        body.add_row("winner", Text(f"none: {ov.no_winner_reason}", style="bold red"))
        return
    body.add_row("winner", Text(f"#{w.trial} {w.label}", style="bold green"))
    body.add_row("", _pick_line(w))
    body.add_row("", ov.winner_note)
    body.add_row("verified", ("yes: " if w.verified else "NO: ") + w.proof)
    if ov.tie or ov.undecided:
        body.add_row("tie" if ov.tie else "undecided", ov.tie_reason or "")
    if ov.served:
        body.add_row("served", Text(ov.served))  # "[worker, ...]" is no markup
    _block(body, "services", ov.services)
    _block(body, "per token", breakdown_lines(ov))
    _block(body, "offload", ov.offload)


def _rival_rows(body: Table, ov: Overview) -> None:
    """The runner-up and its gap, and the gain over llama-cpp-python's defaults."""
    r = ov.runner_up
    if r is not None and ov.gap is not None:
        body.add_row("runner-up", f"#{r.trial} {r.label}: {secs(r.request_s.value)} s, "
                     f"{ov.gap_verdict}")
    b = ov.baseline
    if b is not None and ov.gain is not None:
        more = f", prompt {ov.pp_gain:.2f}x" if ov.pp_gain else ""
        body.add_row("baseline", f"#{b.trial} {b.label} (llama-cpp-python's defaults): "
                     f"{secs(b.request_s.value)} s/request; the winner is {ov.gain:.2f}x as fast "
                     f"({(1 - 1 / ov.gain) * 100:.1f}% less time per request){more}")
    elif ov.winner is not None:
        body.add_row("baseline", "not measured on the winner's build (no gain to show)")


def _front_rows(body: Table, ov: Overview) -> None:
    """The Pareto front, when it holds trade-offs: no trial beats these on every axis. The
    label stays within the column's 10 characters (the other rows' alignment depends on it)."""
    lines = []
    for f in ov.front:
        figs = [f"prompt {tps(f.pp_tps)} t/s"] + (
            [f"generation {tps(f.tg_tps)} t/s"] if f.tg_tps is not None else []) + (
            [f"GPU {f.gpu_mib:,.0f} MiB"] if f.gpu_mib is not None else [])
        lines.append(f"#{f.trial} {f.label}: {', '.join(figs)}")
    _block(body, "pareto", lines)


def _warnings_grid(warnings: list[str]) -> Table:
    """The first WARNINGS_SHOWN warnings, and how many more the trials format has."""
    warn = Table.grid(padding=(0, 0))
    warn.add_column(width=2)
    warn.add_column(overflow="fold", ratio=1)
    for x in warnings[:WARNINGS_SHOWN]:
        warn.add_row("", x)
    hidden = len(warnings) - WARNINGS_SHOWN
    if hidden > 0:
        warn.add_row("", f"... and {hidden} more (tuner report --format trials)")
    return warn


def confirmed_table(ov: Overview) -> Table:
    """The search's leaders measured again in fresh workers: medians over processes, and how
    far apart the processes were (the widest phase's (max - min) / median)."""
    t = Table(title="the search's leaders over processes (medians; the finalists were chosen "
              "on these)", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
              header_style="bold")
    for name in ("#", "settings", "procs", "request s", "pp t/s", "tg t/s", "spread"):
        t.add_column(name, justify="left" if name == "settings" else "right",
                     no_wrap=name != "settings")
    for c in ov.confirmed:
        tg = c.tg_tps
        bad = "" if c.proven else " (not proven in every process)"
        if c.failed_rounds:
            bad = (f" (left out of the finalists: {c.failed_rounds} fresh worker(s) did not "
                   "complete it)")
        spread = widest_spread(c.request_seconds, c.pp_tps, tg)
        t.add_row(f"#{c.trial}", c.label + bad, str(c.processes), secs(c.request_seconds.median),
                  tps(c.pp_tps.median), "" if tg is None else tps(tg.median),
                  f"{spread * 100:.1f}%")
    return t


def effects_table(ov: Overview) -> Table:
    t = Table(title="effect of each setting: the best request time at each value",
              title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold",
              caption="±%: repetition spread of that best trial; median and worst: over every "
                      "trial with the value", caption_justify="left")
    for name, justify in (("setting", "left"), ("value", "left"), ("trials", "right"),
                          ("best s", "right"), ("±%", "right"), ("trial", "right"),
                          ("median s", "right"), ("worst s", "right"), ("vs best", "right")):
        t.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    last = None
    for e in ov.effects:
        if last is not None and e.setting != last:
            t.add_section()
        t.add_row(e.setting if e.setting != last else "", e.value, str(e.trials), secs(e.best_s),
                  f"{e.best_rep_spread_pct:.1f}", f"#{e.best_trial}", secs(e.median_s),
                  secs(e.worst_s), f"{e.vs_best:.3f}x", style="bold" if e.vs_best == 1 else None)
        last = e.setting
    return t


def importance_view(shares: dict[str, float]) -> Table:
    t = Table(box=None, pad_edge=False, show_header=False)
    t.add_column(no_wrap=True)
    t.add_column(no_wrap=True)
    t.add_column(justify="right", no_wrap=True)
    for name, share in shares.items():
        t.add_row(name, "█" * max(1, round(share * 40)) if share > 0.005 else "", f"{share:.0%}")
    return t


# --- the per-trial table -------------------------------------------------------------------

def _kv(kv: str) -> str:
    k, _, v = kv.partition("/")
    return k if k == v else kv


OK = {"complete": "no", "infeasible": "infeas", "crashed": "crash", "timeout": "timeout",
      "failed": "failed", "pruned": "pruned"}


def compact_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]], str]:
    """The report rows cut to what fits 100 columns: (headers, cells, caption). Columns with
    one value over every row are dropped and named in the caption instead."""
    if not rows:
        return ["#"], [], "no trials"
    # Optional setting columns (tuner/settings.py) the rows carry, after the fixed ones.
    extra = [st.column for st in SETTINGS if not st.shown and st.column in rows[0]]
    cells = []
    for r in rows:
        spreads = [x for x in (r.get("pp_spread_pct"), r.get("tg_spread_pct")) if x is not None]
        cells.append({
            "#": str(r["trial"]), "build": str(r["build"])[:14], "ngl": str(r["ngl"]),
            "b/ub": f"{r['n_batch']}/{r['n_ubatch']}", "fa": r["fa"], "kv": _kv(r["kv"]),
            "thr": str(r["threads"]), **{c: str(r[c]) for c in extra},
            "pp t/s": tps(r.get("pp_tps")),
            "±%": f"{max(spreads):.1f}" if spreads else "", "tg t/s": tps(r.get("tg_tps")),
            "req s": secs(r.get("request_s")),
            "x base": (f"{r['speedup_vs_baseline']:.2f}" if r.get("speedup_vs_baseline")
                       is not None else ""),
            "MiB": f"{r['gpu_mib']:,.0f}" if r.get("gpu_mib") is not None else "",
            "ok": "yes" if r["verified"] == "yes" else OK.get(r["state"], r["state"]),
            "why": r.get("why") or "",
        })
    order = ["#", "build", "ngl", "b/ub", "fa", "kv", "thr", *extra, "pp t/s", "±%", "tg t/s",
             "req s", "x base", "MiB", "ok", "why"]
    constant = [c for c in ("build", "ngl", "b/ub", "fa", "kv", "thr", *extra)
                if len({row[c] for row in cells}) == 1]
    empty = [c for c in ("tg t/s", "±%", "x base", "MiB", "why") if not any(row[c] for row in cells)]
    keep = [c for c in order if c not in constant and c not in empty]
    caption = ", ".join(f"{c} {cells[0][c]}" for c in constant)
    return keep, [[row[c] for c in keep] for row in cells], (
        f"every trial: {caption}" if caption else "") + (
        "; x base: request time at llama-cpp-python's defaults on the same build / this trial's"
        if "x base" in keep else "")


NUMERIC = {"#", "ngl", "thr", "pp t/s", "±%", "tg t/s", "req s", "x base", "MiB"}


def trials_view(rows: list[dict[str, Any]], title: str | None = None) -> Table:
    """The per-trial table: verified trials first by request time (plain), then unproven
    (yellow), then failed (dim); ±% is the larger repetition spread of pp and tg."""
    headers, cells, caption = compact_rows(rows)
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
              collapse_padding=True, header_style="bold", caption=caption or None,
              caption_justify="left")
    for h in headers:
        if h == "why":
            t.add_column(h, overflow="fold", min_width=12, ratio=1)
        else:
            t.add_column(h, justify="right" if h in NUMERIC else "left", no_wrap=True)
    for r, line in zip(rows, cells):
        style = None if r.get("rank") is not None else (
            "yellow" if r.get("state") == "complete" else "dim")
        t.add_row(*line, style=style)
    return t


def compare_view(c: Comparison) -> RenderableType:
    head = _grid()
    for tag, s in (("A", c.a), ("B", c.b)):
        head.add_row(tag, f"{s.name} ({s.trials} trials; GPU {s.gpu or 'none'}; "
                     f"llama-cpp-python {s.llama_cpp_python or '?'}; winner {s.winner or 'none'})")
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, header_style="bold",
              caption="B/A above 1: B takes longer (request s) or does more (t/s, MiB). "
                      "beyond: the two intervals do not overlap", caption_justify="left")
    for h, j in (("what", "left"), ("settings", "left"), ("A", "right"), ("B", "right"),
                 ("B/A", "right"), ("beyond", "left")):
        t.add_column(h, justify=j, overflow="fold")  # type: ignore[arg-type]
    for r in c.rows:
        t.add_row(r["what"], r["settings"], _fig(r["a"]), _fig(r["b"]),
                  "" if r["b_over_a"] is None else f"{r['b_over_a']:.3f}",
                  r["beyond_noise"] or "n/a")
    return Group(head, Text(""), t if c.rows else Text("no settings measured in both studies"))


def _fig(x: float | None) -> str:
    return "" if x is None else (f"{x:,.0f}" if x >= 100 else f"{x:.4g}")


def breakdown_lines(ov: Overview) -> list[str]:
    """Where each millisecond of the winner's served token goes, one line per stage (ms per
    token, what it adds, its share), or why it was not measured."""
    bd = ov.breakdown
    if bd is None:
        return [f"breakdown not measured: {ov.breakdown_note}"] if ov.breakdown_note else []
    gpu = bd.gpu_share()
    head = (f"#{bd.trial} at depth {bd.prompt_tokens}, {bd.gen_tokens} tokens x "
            f"{bd.repetitions}" + (f"; the decode is {gpu:.0%} of a served token"
                                   if gpu is not None else ""))
    return [head, *bd.lines()]
