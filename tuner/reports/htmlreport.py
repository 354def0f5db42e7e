"""The HTML report: one self-contained file (inline SVG charts, inline CSS, no script, nothing
fetched) with the answer, the roofline and its assumptions, what each setting did, the charts,
the winner's placement proof, the study's environment, and every trial."""

from __future__ import annotations

from collections import Counter
from html import escape
from typing import Any

from tuner.deploy.servicecompare import HEADERS, flags_line, raw_of, recommendation, rows
from tuner.reports.analysis import frame, pareto, ranked_frame
from tuner.reports.compare import Comparison
from tuner.reports.overview import Overview
from tuner.reports.roofline import Roofline
from tuner.reports.views import secs, tps
from tuner.results.breakdown import ADDS, STAGES
from tuner.results.records import (
    FinalistReport,
    ServedFigures,
    Stat,
    TrialRecord,
    WorkerDrift,
)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;
max-width:1100px;padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;
border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{padding:.2em .6em;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
dl.kv{display:grid;grid-template-columns:10em 1fr;gap:.2em 1em}dl.kv dt{font-weight:600}
dl.kv dd{margin:0}.win{color:#17692c;font-weight:600}.bad{color:#b00020;font-weight:600}
.warn{color:#8a5a00}.muted{color:#777}.grid{display:grid;grid-template-columns:
repeat(auto-fit,minmax(480px,1fr));gap:1em}figure{margin:0}svg{max-width:100%;height:auto}
tr.unproven td{color:#8a5a00}tr.failed td{color:#999}code{font-size:.9em}
"""


def _e(x: Any) -> str:
    return escape("" if x is None else str(x))


def html_table(headers: list[str], rows: list[list[Any]], numeric: set[str] | frozenset = frozenset(),
          row_classes: list[str] | None = None) -> str:
    head = "".join(f'<th class="n">{_e(h)}</th>' if h in numeric else f"<th>{_e(h)}</th>"
                   for h in headers)
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(f'<td class="n">{_e(v)}</td>' if h in numeric else f"<td>{_e(v)}</td>"
                        for h, v in zip(headers, r))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _dl(items: list[tuple[str, str]]) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>\n{body}\n"
            f"</body></html>\n")


def _answer(ov: Overview) -> str:
    items: list[tuple[str, str]] = []
    w = ov.winner
    if w is None:
        items.append(("winner", f'<span class="bad">none: {_e(ov.no_winner_reason)}</span>'))
    else:
        iv = w.request_s
        items += [
            ("winner", f'<span class="win">#{w.trial} {_e(w.label)}</span>'),
            ("request time", f"{secs(iv.value)} s [{secs(iv.low)} to {secs(iv.high)}, "
                             f"{_e(w.how)}]"),
            ("speeds", f"prompt {tps(w.pp_tps)} t/s, generation {tps(w.tg_tps)} t/s"
                       + (f", GPU {w.gpu_mib:,.0f} MiB" if w.gpu_mib is not None else "")),
            ("measured how", _e(ov.winner_note)),
            ("verified", ('yes: ' if w.verified else '<span class="bad">NO</span>: ')
             + _e(w.proof)),
        ]
        if ov.tie or ov.undecided:
            items.append(("tie" if ov.tie else "undecided", _e(ov.tie_reason)))
    r = ov.runner_up
    if r is not None and ov.gap_verdict:
        items.append(("runner-up", f"#{r.trial} {_e(r.label)}: {secs(r.request_s.value)} s, "
                      f"{_e(ov.gap_verdict)}"))
    b = ov.baseline
    if b is not None and ov.gain is not None:
        more = f"; prompt {ov.pp_gain:.2f}x as fast" if ov.pp_gain else ""
        items.append(("baseline", f"#{b.trial} {_e(b.label)} (llama-cpp-python's defaults): "
                      f"{secs(b.request_s.value)} s; the winner is <b>{ov.gain:.2f}x</b> as fast "
                      f"per request ({(1 - 1 / ov.gain) * 100:.1f}% less time){more}"))
    return _dl(items)


def _bytes(n: float) -> str:
    return f"{n / 1e9:,.3f} GB" if n >= 1e9 else f"{n / 1e6:,.3f} MB"


def _roofline(r: Roofline | None) -> str:
    if r is None:
        return "<p class=muted>no measured trial</p>"
    rows = [
        ["generation", f"{tps(r.tg_tps)} t/s x {_bytes(r.bytes_per_token)} per token",
         f"{r.achieved_gbs:,.4g} GB/s" if r.achieved_gbs else "",
         f"{r.peak_bandwidth_gbs:,.0f} GB/s" if r.peak_bandwidth_gbs else "unknown",
         f"{r.bandwidth_share * 100:.1f}%" if r.bandwidth_share is not None else "n/a"],
        ["prompt", (f"{tps(r.pp_tps)} t/s x {r.flops_per_token / 1e9:,.4g} GFLOP per token"
                    if r.flops_per_token else f"parameters {r.parameters_source}"),
         f"{r.achieved_tflops:,.4g} TFLOPS" if r.achieved_tflops else "",
         f"{r.peak_tflops:,.0f} TFLOPS" if r.peak_tflops else "unknown",
         f"{r.tflops_share * 100:.1f}%" if r.tflops_share is not None else "n/a"],
    ]
    out = html_table(["", "how", "achieved", "peak", "share"], rows, {"achieved", "peak", "share"})
    out += (f"<p>Trial #{r.trial} on {_e(r.gpu or 'no GPU')}"
            f"{' (' + _e(r.peak_name) + ')' if r.peak_name else ''}. Assumptions:</p><ul>"
            + "".join(f"<li>{_e(a)}</li>" for a in r.assumptions)
            + (f"<li>parameters: {_e(r.parameters_source)}</li>") + "</ul>")
    return out


def _effects(ov: Overview) -> str:
    rows = [[e.setting, e.value, e.trials, secs(e.best_s), f"{e.best_rep_spread_pct:.1f}",
             f"#{e.best_trial}", secs(e.median_s), secs(e.worst_s), f"{e.vs_best:.3f}x"]
            for e in ov.effects]
    if not rows:
        return "<p class=muted>one value per setting: nothing to compare</p>"
    return html_table(["setting", "value", "trials", "best s", "±% reps", "best trial", "median s",
                  "worst s", "vs best"], rows,
                 {"trials", "best s", "±% reps", "median s", "worst s", "vs best"})


def _placement(rec: TrialRecord | None) -> str:
    if rec is None:
        return "<p class=muted>no winner</p>"
    v, p = rec.verification, rec.placement or {}
    items = [("verdict", ("proven: " if v.verified else '<span class="bad">not proven</span>: ')
              + _e(v.summary or "; ".join(v.reasons)))]
    if v.reasons:
        items.append(("reasons", _e("; ".join(v.reasons))))
    layers = Counter((p.get("layer_devices") or {}).values())
    kv = Counter((p.get("kv_layer_devices") or {}).values())
    items += [
        ("layers", _e(", ".join(f"{n} on {d}" for d, n in layers.items()) or "not in the log")
         + (f" ({p.get('offloaded_layers')}/{p.get('total_layers')} offloaded)"
            if p.get("total_layers") else "")),
        ("KV cache layers", _e(", ".join(f"{n} on {d}" for d, n in kv.items()) or "none")),
        ("GPU devices", _e(", ".join(p.get("cuda_devices") or []) or "none")),
        ("flash attention", _e(p.get("flash_attn"))),
        ("KV types", _e("/".join(p.get("kv_types") or []))),
        ("context", _e(f"n_ctx {p.get('n_ctx')}, n_batch {p.get('n_batch')}, "
                       f"n_ubatch {p.get('n_ubatch')}")),
        ("kernel build", _e(rec.spec.model.build)),
    ]
    bufs = [[kind, dev, f"{mib:,.2f}"] for kind, per in rec.buffers_mib.items()
            for dev, mib in per.items()]
    return (f"<p>From llama.cpp's own load log of trial #{rec.number}:</p>" + _dl(items)
            + html_table(["buffer", "device", "MiB"], bufs, {"MiB"}))


def _environment(records: list[TrialRecord], rec: TrialRecord | None) -> str:
    env = (rec.environment if rec else None) or next(
        (r.environment for r in records if r.environment), None)
    if env is None:
        return "<p class=muted>no environment recorded</p>"
    gpus = "; ".join(f"{g.get('name')} ({g.get('memory_mib') or g.get('memory_total_mib')} MiB)"
                     for g in env.gpus) or "none"
    items = [("host", env.hostname), ("platform", env.platform), ("CPU",
             f"{env.cpu} ({env.cpu_count} threads)"), ("GPUs", gpus),
             ("driver", env.driver or "none"), ("Python", env.python),
             ("llama-cpp-python", env.llama_cpp_python), ("tuner", env.tuner),
             ("model", env.model_path), ("model size", f"{env.model_bytes:,} bytes"),
             ("model SHA-256", env.model_sha256)]
    builds = {r.environment.build_name: r.environment for r in records if r.environment}
    out = _dl([(k, _e(v)) for k, v in items])
    out += html_table(["build", "library folder", "library reports"],
                 [[name, e.build_lib_dir or "(installed)", e.system_info or ""]
                  for name, e in sorted(builds.items())])
    return out


TRIAL_HEADERS = ["#", "build", "ngl", "n_batch", "n_ubatch", "fa", "kv", "threads", "pp t/s",
                 "tg t/s", "request s", "x base", "GPU MiB", "state", "verified", "why"]
TRIAL_NUMERIC = {"#", "ngl", "n_batch", "n_ubatch", "threads", "pp t/s", "tg t/s", "request s",
                 "x base", "GPU MiB"}


def _trials(rows: list[dict[str, Any]]) -> str:
    cells, classes = [], []
    for r in rows:
        cells.append([r["trial"], r["build"], r["ngl"], r["n_batch"], r["n_ubatch"], r["fa"],
                      r["kv"], r["threads"], tps(r["pp_tps"]), tps(r["tg_tps"]),
                      secs(r["request_s"]), r.get("speedup_vs_baseline"),
                      r["gpu_mib"], r["state"], r["verified"], r["why"]])
        classes.append("" if r["rank"] is not None else
                       ("unproven" if r["state"] == "complete" else "failed"))
    return html_table(TRIAL_HEADERS, cells, TRIAL_NUMERIC, classes)


def _served_cells(served: dict | None) -> list[str]:
    """The finalist through llama_cpp.server (raw figures are the columns before)."""
    if not served:
        return ["", "", ""]
    if "error" in served:
        return [f"not served: {served['error']}", "", ""]
    fig = ServedFigures.model_validate(served)
    return [secs(fig.ttft_s.median), tps(fig.gen_tps.median) if fig.gen_tps else "",
            secs(fig.request_s.median)]


def _confirmed(f: FinalistReport) -> str:
    """The search's leaders over processes, from which the finalists were chosen."""
    if not f.confirmed:
        return ""
    finals = {x.trial for x in f.finalists}

    def rng(s: Stat | None, fmt: Any) -> str:
        return "" if s is None else f"{fmt(s.median)} [{fmt(s.min)}-{fmt(s.max)}]"

    rows = [[c.trial, c.label, c.processes, rng(c.request_seconds, secs), rng(c.pp_tps, tps),
             rng(c.tg_tps, tps), "yes" if c.proven else
             f"no ({c.failed_rounds} failed)" if c.failed_rounds else "no",
             "yes" if c.trial in finals else ""] for c in f.confirmed]
    return ("<p>The search's leaders, each measured again in fresh workers: the median over "
            "processes (the search trial's and each fresh worker's median), [min-max over "
            "processes]. The finalists were chosen on these medians.</p>"
            + html_table(["#", "settings", "processes", "request s", "pp t/s", "tg t/s", "proven",
                     "finalist"], rows, {"#", "processes"}))


def _services(f: FinalistReport) -> str:
    """The winner through both deploy targets side by side, and which to run."""
    if f.llama_server is None:
        return ""
    win = next((x for x in f.finalists if x.trial == f.winner_trial), None)
    table_rows = rows(win.served if win else None, f.llama_server, raw_of(f, f.winner_trial))
    rec = recommendation(table_rows)
    said = flags_line(f.llama_server_flags)
    return ("<p>The winner served over HTTP by each deploy target (the same workload and "
            "sampling; share of raw: the raw prompt time over the time to first token, served "
            "generation over raw, raw from the finalists' medians).</p>"
            + html_table(HEADERS, [r.cells() for r in table_rows], set())
            + (f"<p>{_e(said)}</p>" if said else "")
            + (f"<p>{_e(rec)}</p>" if rec else ""))


def _finalists(f: FinalistReport | None) -> str:
    if f is None:
        return ("<p class=muted>No finalist re-measurement stored: the winner "
                "above is the best search trial.</p>")
    rows = [[x.trial, x.label, x.rounds, x.samples,
             f"{secs(x.request_seconds.value)} [{secs(x.request_seconds.low)}-"
             f"{secs(x.request_seconds.high)}]",
             f"{x.ratio_to_leader.value:.3f} [{x.ratio_to_leader.low:.3f}-"
             f"{x.ratio_to_leader.high:.3f}]", tps(x.pp_tps.value),
             tps(x.tg_tps.value) if x.tg_tps else "", "yes" if x.verified else "no",
             *_served_cells(x.served)]
            for x in f.finalists]
    return (_confirmed(f) + _services(f)
            + f"<p>Decision: trial #{f.winner_trial} (fastest point estimate #{f.leader_trial})"
            f"{'; tie' if f.tie else '; undecided' if f.undecided else ''}: {_e(f.reason)}</p>"
            + html_table(["#", "settings", "rounds", "samples", f"request s ({f.level:.0%})",
                     "ratio to leader", "pp t/s", "tg t/s", "verified", "served ttft s",
                     "served gen t/s", "served request s"], rows,
                    {"#", "rounds", "samples", "pp t/s", "tg t/s"}))


def _breakdown(ov: Overview, plots: Any) -> str:
    """The winner's per-token breakdown: a stacked bar and its table, or why there is none."""
    bd = ov.breakdown
    if bd is None:
        why = f": {ov.breakdown_note}" if ov.breakdown_note else " (older study, or not asked)"
        return f"<p class=muted>Not measured{_e(why)}.</p>"
    rows = []
    for sh in bd.shares():
        st = bd.stage(sh.key)
        rng = (f"{st.ms_per_token.min:.3f}-{st.ms_per_token.max:.3f}"
               if st and st.ms_per_token else "")
        rows.append([sh.label, f"{sh.ms_per_token:.3f}", rng, f"{sh.added_ms:+.3f}",
                     f"{sh.share:.0%}" if sh.share is not None else "", ADDS[sh.key]])
    rows += [[STAGES[s.key], "", "", "", "", f"not measured: {s.error}"] for s in bd.stages
             if s.ms_per_token is None]
    sampling = ", ".join(f"{k} {v:g}" for k, v in bd.sampling.items())
    return (f"<p>Trial #{bd.trial} ({_e(bd.label)}), {bd.gen_tokens} tokens generated at "
            f"depth {bd.prompt_tokens}, {bd.repetitions} repetitions of each stage "
            f"interleaved, server threads {bd.threads}; llama_cpp.server's default sampling "
            f"({_e(sampling)}). Each stage is the one before plus one layer of the served "
            "path; the share is what it adds over the last stage's time.</p>"
            f"<figure>{plots.breakdown_bar(bd)}</figure>"
            + html_table(["stage", "ms/token", "range", "adds ms", "share", "what it adds"], rows,
                    {"ms/token", "adds ms", "share"}))


def _drift(drifts: list[WorkerDrift]) -> str:
    if not drifts:
        return "<p class=muted>No drift sentinel records stored.</p>"
    rows = [[d.worker_id, d.build, f"#{d.first_trial}", ", ".join(map(str, d.trials)),
             "" if d.pp_drift is None else f"{d.pp_drift * 100:+.1f}%",
             "" if d.tg_drift is None else f"{d.tg_drift * 100:+.1f}%",
             f"{d.noise * 100:.1f}%", "YES" if d.significant else "no"] for d in drifts]
    return html_table(["worker", "build", "re-measured", "its trials", "pp drift", "tg drift",
                  "noise", "significant"], rows, {"pp drift", "tg drift", "noise"})


def study_html(ov: Overview, records: list[TrialRecord], rows: list[dict[str, Any]],
               roof: Roofline | None, finalists: FinalistReport | None,
               drifts: list[WorkerDrift]) -> str:
    """The whole page for one study."""
    from tuner.reports import plots  # matplotlib: loaded only when a page is drawn

    by_number = {r.number: r for r in records}
    win = by_number.get(ov.winner.trial) if ov.winner else None
    df, ranked = frame(records), ranked_frame(records)
    failed = [r.number for r in records if r.measurement is None]
    charts = [plots.pp_vs_ubatch(ranked), plots.tg_vs_kv(ranked), plots.flash_attention(ranked),
              plots.pareto_front(ranked, pareto(records)), plots.importance_bars(ov.importance),
              plots.history(df, failed)]
    warnings = ("<ul>" + "".join(f'<li class="warn">{_e(w)}</li>' for w in ov.warnings) + "</ul>"
                if ov.warnings else "<p class=muted>none</p>")
    head = _dl([("machine", _e(f"{ov.device}, GPU {ov.gpu or 'none'}, llama-cpp-python "
                             f"{ov.llama_cpp_python}")), ("model", _e(ov.model)),
                ("workload", _e(ov.workload)),
                ("trials", _e(f"{ov.total} stored, {ov.verified} verified; " + ", ".join(
                    f"{n} {s}" for s, n in ov.states.items() if n)))])
    body = (f"<h1>tuner report: {_e(ov.study)}</h1>{head}"
            f"<h2>The answer</h2>{_answer(ov)}"
            f"<h2>Roofline</h2>{_roofline(roof)}"
            f"<h2>Effect of each setting</h2><p>The best request time at each value of each "
            f"setting (best value first), over the verified trials.</p>{_effects(ov)}"
            f"<h2>Charts</h2><div class=grid>"
            + "".join(f"<figure>{c}</figure>" for c in charts) + "</div>"
            f"<p class=muted>Importance: the share of the variance of log(request time) each "
            f"setting explains on its own (a one-way variance decomposition of the verified "
            f"trials; settings interact, so the shares need not add up to 100%).</p>"
            f"<h2>Finalists</h2>{_finalists(finalists)}"
            f"<h2>Where each millisecond per token goes</h2>{_breakdown(ov, plots)}"
            f"<h2>Warnings</h2>{warnings}<h2>Worker drift</h2>{_drift(drifts)}"
            f"<h2>Placement proof of the winner</h2>{_placement(win)}"
            f"<h2>Environment</h2>{_environment(records, win)}"
            f"<h2>Every trial</h2>{_trials(rows)}")
    return _page(f"tuner report: {ov.study}", body)


def compare_html(c: Comparison) -> str:
    sides = _dl([(tag, _e(f"{s.name} ({s.source}): {s.trials} trials, GPU {s.gpu or 'none'}, "
                          f"llama-cpp-python {s.llama_cpp_python}, model {s.model}; winner "
                          f"{s.winner or 'none'}")) for tag, s in (("A", c.a), ("B", c.b))])
    rows = [[r["what"], r["settings"], r["a"], r["a_range"], r["b"], r["b_range"],
             r["b_over_a"], r["beyond_noise"] or "n/a"] for r in c.rows]
    body = (f"<h1>tuner: {_e(c.a.name)} vs {_e(c.b.name)}</h1>{sides}<h2>Side by side</h2>"
            + html_table(["what", "settings", "A", "A range", "B", "B range", "B/A", "beyond noise"],
                    rows, {"A", "B", "B/A"})
            + "<p class=muted>Ranges: the finalist re-measurement's interval when stored, else "
              "the trial's repetitions (min-max). Beyond noise: the two ranges do not "
              "overlap.</p>")
    return _page(f"tuner compare: {c.a.name} vs {c.b.name}", body)
