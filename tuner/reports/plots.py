"""The report's charts, drawn with matplotlib (Agg, no display) from the frame of
``tuner.reports.analysis`` and returned as inline SVG text: no files, no fonts or scripts fetched, the
same bytes for the same records (fixed hash salt, no date)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from tuner.results.breakdown import TokenBreakdown  # noqa: E402

plt.rcParams.update({
    "svg.hashsalt": "tuner-report", "svg.fonttype": "none", "font.size": 9,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "grid.alpha": 0.3, "figure.dpi": 96,
})
STYLES = ["-", "--", ":"]
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


def svg(fig: Figure) -> str:
    """The figure as an <svg> element (XML prolog and doctype dropped), then closed."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None},
                bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _empty(message: str) -> str:
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center")
    return svg(fig)


def pp_vs_ubatch(df: pd.DataFrame) -> str:
    """Prompt speed against n_ubatch, one line per build (best over the other settings), every
    trial as a faint dot."""
    if df.empty:
        return _empty("no measured trials")
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, (build, g) in enumerate(df.groupby("build", sort=True)):
        c = COLORS[i % len(COLORS)]
        ax.scatter(g["n_ubatch"], g["pp_tps"], color=c, alpha=0.25, s=14)
        best = g.groupby("n_ubatch")["pp_tps"].max()
        ax.plot(best.index, best.values, marker="os^Dv"[i % 5], linestyle=STYLES[i % 3],
                color=c, label=f"{build} (best)")
    ax.set_xscale("log", base=2)
    ticks = sorted(df["n_ubatch"].unique())
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("n_ubatch")
    ax.set_ylabel("prompt tokens/s")
    ax.set_title("prompt speed vs n_ubatch, per build")
    ax.legend(fontsize=8)
    return svg(fig)


def tg_vs_kv(df: pd.DataFrame) -> str:
    """Generation speed per KV cache type (best and spread over the other settings), against
    context depth when the data holds more than one depth."""
    d = df.dropna(subset=["tg_tps"])
    if d.empty:
        return _empty("no generation measured")
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    if d["depth"].nunique() > 1:
        for i, (kv, g) in enumerate(d.groupby("kv_cache")):
            best = g.groupby("depth")["tg_tps"].max()
            ax.plot(best.index, best.values, marker="o", color=COLORS[i % 7], label=kv)
        ax.set_xlabel("context depth (tokens)")
        ax.legend(fontsize=8)
        ax.set_title("generation speed vs KV cache type and depth")
    else:
        kvs = sorted(d["kv_cache"].unique())
        for i, kv in enumerate(kvs):
            for fa, g in d[d["kv_cache"] == kv].groupby("flash_attn"):
                j = 0 if fa == "off" else 1  # the same colour and side for a setting throughout
                x = i + (j - 0.5) * 0.3
                ax.scatter([x] * len(g), g["tg_tps"], color=COLORS[j], alpha=0.5, s=16,
                           label=f"flash_attn {fa}")
                ax.hlines(g["tg_tps"].max(), x - 0.12, x + 0.12, color=COLORS[j], lw=2)
        ax.set_xticks(range(len(kvs)), kvs)
        ax.set_xlim(-0.6, len(kvs) - 0.4)
        ax.set_xlabel("KV cache type (K/V)")
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=8)
        ax.set_title(f"generation speed vs KV cache type at depth {int(d['depth'].iloc[0]):,}")
    ax.set_ylabel("generated tokens/s")
    return svg(fig)


def flash_attention(df: pd.DataFrame) -> str:
    """Best prompt and generation speed with flash attention off and on, per build."""
    if df.empty or df["flash_attn"].nunique() < 2:
        return _empty("flash attention was not varied")
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.2))
    builds = sorted(df["build"].unique())
    for ax, col, name in ((axes[0], "pp_tps", "prompt tokens/s"),
                          (axes[1], "tg_tps", "generated tokens/s")):
        best = df.groupby(["build", "flash_attn"])[col].max()
        for j, fa in enumerate(("off", "on")):
            vals = [best.get((b, fa), float("nan")) for b in builds]
            ax.bar([i + (j - 0.5) * 0.38 for i in range(len(builds))], vals, width=0.36,
                   color=COLORS[j], label=f"flash_attn {fa}")
        ax.set_xticks(range(len(builds)), builds, rotation=15)
        ax.set_ylabel(name)
    axes[0].legend(fontsize=8)
    fig.suptitle("flash attention off / on (best trial of each)")
    return svg(fig)


def pareto_front(df: pd.DataFrame, front: pd.DataFrame) -> str:
    """Prompt vs generation speed of every trial, coloured by GPU memory; the Pareto front
    (prompt up, generation up, memory down) ringed and numbered."""
    if df.empty:
        return _empty("no measured trials")
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    mem = df["gpu_mib"]
    if mem.notna().all():
        sc = ax.scatter(df["pp_tps"], df["tg_tps"], c=mem, cmap="viridis", s=22)
        fig.colorbar(sc, ax=ax, label="GPU memory (MiB)")
    else:
        ax.scatter(df["pp_tps"], df["tg_tps"], color=COLORS[0], s=22)
    ax.scatter(front["pp_tps"], front["tg_tps"], facecolors="none", edgecolors="#d62728",
               s=90, linewidths=1.5, label="Pareto front")
    for _, r in front.iterrows():
        ax.annotate(f"#{int(r['trial'])}", (r["pp_tps"], r["tg_tps"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("prompt tokens/s")
    ax.set_ylabel("generated tokens/s")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title("prompt speed, generation speed and GPU memory")
    return svg(fig)


def importance_bars(shares: dict[str, float]) -> str:
    if not shares:
        return _empty("too few trials, or one setting only, to tell importance")
    fig, ax = plt.subplots(figsize=(6.0, 0.5 + 0.35 * len(shares)))
    names = list(shares)[::-1]
    ax.barh(names, [shares[n] * 100 for n in names], color=COLORS[0])
    ax.set_xlabel("% of the variance of log(request time) explained alone")
    ax.set_title("parameter importance")
    return svg(fig)


def history(records_df: pd.DataFrame, failed: list[int] | None = None) -> str:
    """Request time by trial number (verified, unverified) and the best so far; trials that
    never measured (``failed``) marked along the bottom."""
    d = records_df.sort_values("trial")
    if d.empty and not failed:
        return _empty("no trials")
    fig, ax = plt.subplots(figsize=(7.2, 3.2))
    ok = d[d["verified"]]
    ax.scatter(ok["trial"], ok["request_s"], color=COLORS[0], s=18, label="verified")
    bad = d[~d["verified"]]
    if not bad.empty:
        ax.scatter(bad["trial"], bad["request_s"], color=COLORS[1], marker="x", s=22,
                   label="measured, not verified")
    if not ok.empty:
        best = ok.set_index("trial")["request_s"].cummin()
        ax.step(best.index, best.values, where="post", color=COLORS[2], label="best so far")
    if failed:
        low = float(d["request_s"].min()) * 0.95 if not d.empty else 0.0
        ax.scatter(failed, [low] * len(failed), color=COLORS[3], marker="v", s=26,
                   label="no measurement (failed, infeasible, crashed, timeout)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial number")
    ax.set_ylabel("request seconds (lower is better)")
    ax.set_title("trial history")
    ax.legend(fontsize=8)
    return svg(fig)


def breakdown_bar(bd: TokenBreakdown) -> str:
    """One horizontal bar, stacked: each stage's segment runs from where the stages before it
    ended to its own ms per token, in the order the served path adds them, so the bar ends at
    the slowest stage measured. A stage measured faster than one before it (stages are timed
    separately) has no segment and is said in the legend."""
    shares = bd.shares()
    if not shares:
        return _empty("no stage of the per-token breakdown was measured")
    fig, ax = plt.subplots(figsize=(7.5, 1.9))
    end = 0.0
    for i, sh in enumerate(shares):
        share = f", {sh.share:.0%}" if sh.share is not None else ""
        label = f"{sh.label}: {sh.ms_per_token:.3f} ms ({sh.added_ms:+.3f}{share})"
        if sh.ms_per_token > end:
            ax.barh([0], [sh.ms_per_token - end], left=end, color=COLORS[i % len(COLORS)],
                    label=label)
            end = sh.ms_per_token
        else:
            ax.barh([0], [0], color="none", label=label + ", no segment")
    ax.set_yticks([])
    ax.set_xlabel("ms per generated token")
    ax.set_title(f"where a served token's time goes: #{bd.trial}, depth {bd.prompt_tokens}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=2, fontsize=8,
              frameon=False)
    return svg(fig)
