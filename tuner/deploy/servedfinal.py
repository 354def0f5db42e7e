"""The finalists through the served path: each finalist's settings served by a real
llama_cpp.server and timed over HTTP (what ``tuner verify`` measures later), the server's thread
count tried as a dimension for the winner, and the production choice moved to the served
objective when the served figures rank another finalist first beyond their spread, in both
orders (A B, then B A).

The raw decode loop stays the yardstick against llama-bench; the served figures are what the
service delivers (the served path's Python work per token halved a 7B's generation speed on an
H100, docs/benchmarks.md). Both are stored, named."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from tuner.deploy.prodconfig import record_threads
from tuner.errors import TunerError
from tuner.machine.cpus import default_threads
from tuner.results.records import FinalistReport, ServedFigures, TrialRecord

Serve = Callable[[TrialRecord, int | None], ServedFigures]


@dataclass(frozen=True)
class ServedChoice:
    report: FinalistReport  # with each finalist's served figures, and the decision
    winner: TrialRecord
    served: ServedFigures | None  # the winner's, at ``threads``
    threads: int | None  # the server thread count chosen from the served figures
    error: str | None = None  # why the winner has no served figures (None when it has)


def served_error(report: FinalistReport) -> str | None:
    """Why the winner of ``report`` has no served figures, as stored in its finalist entry
    (None when it has figures, or when serving was not asked)."""
    win = next((f for f in report.finalists if f.trial == report.winner_trial), None)
    if win is None or not win.served or "error" not in win.served:
        return None
    return str(win.served["error"])


def _failure(e: Exception) -> str:
    """One line for a served phase that failed: a TunerError's message, else the type too."""
    return e.message if isinstance(e, TunerError) else f"{type(e).__name__}: {e}"


def thread_candidates(record: TrialRecord) -> list[int]:
    """Server thread counts to try: with every layer on the GPU, llama.cpp's CPU threads compete
    with the per-token Python work (4 of 16 served fastest on an H100); a CPU trial, and a trial
    whose threads the search chose (a partial offload: the host computes layers), keeps the
    thread count it measured."""
    if record.spec.model.device == "cpu" or record.spec.context.n_threads:
        return [record_threads(record) or default_threads()]
    cores = os.cpu_count() or 1
    return sorted({cores, default_threads(), max(1, cores // 2), max(1, cores // 4)},
                  reverse=True)


def _confirm(records: dict[int, TrialRecord], serve: Serve, first: int,
             second: int) -> dict[int, ServedFigures] | None:
    """Both finalists served once more, in the order opposite to the first pass: a served
    lead that comes from when a server ran (on an H100 the same config's figures moved by 10%
    over seconds, docs/benchmarks.md run 7) does not survive the reversal. None when either
    cannot be served."""
    try:
        return {first: serve(records[first], None), second: serve(records[second], None)}
    except Exception:  # noqa: BLE001 - no confirmation: the raw decision stands
        return None


def choose(report: FinalistReport, records: dict[int, TrialRecord], serve: Serve) -> ServedChoice:
    """Serve every verified finalist, then the winner at each thread candidate; decide."""
    served: dict[int, ServedFigures] = {}
    figures = []
    for f in report.finalists:
        fig = None
        if f.verified:
            try:
                fig = serve(records[f.trial], None)
            except Exception as e:  # noqa: BLE001 - a finalist the server cannot run loses
                # its place, and says why (the sweep's output and the sidecar show it)
                figures.append(f.model_copy(update={"served": {"error": _failure(e)}}))
                continue
            served[f.trial] = fig
        figures.append(f.model_copy(update={"served": fig.model_dump(mode="json") if fig
                                             else None}))
    winner = report.winner_trial
    reason = report.reason
    if winner in served:
        best = min(served, key=lambda t: served[t].request_s.median)
        if best != winner and served[best].beats(served[winner]):
            again = _confirm(records, serve, first=winner, second=best)
            if again is not None and again[best].beats(again[winner]):
                reason = (f"{reason}; served path: #{best} answers requests in "
                          f"{served[best].request_s.median:.4f} s against #{winner}'s "
                          f"{served[winner].request_s.median:.4f} s beyond both spreads, and "
                          f"again served in the other order ({again[best].request_s.median:.4f}"
                          f" s against {again[winner].request_s.median:.4f} s), so the served "
                          f"objective chose #{best}")
                winner = best
            else:
                reason = (f"{reason}; served path: #{best} served faster than #{winner} "
                          f"({served[best].request_s.median:.4f} s against "
                          f"{served[winner].request_s.median:.4f} s) but not again in the other "
                          "order: the raw decision stands")
    elif served:  # the raw winner could not be served: the fastest served finalist
        winner = min(served, key=lambda t: served[t].request_s.median)
        reason = f"{reason}; #{report.winner_trial} could not be served, #{winner} was"
    chosen_fig, threads = served.get(winner), None
    if chosen_fig is not None:
        tried = {chosen_fig.n_threads: chosen_fig}
        for t in thread_candidates(records[winner]):
            if t not in tried:
                try:
                    tried[t] = serve(records[winner], t)
                except Exception:  # noqa: BLE001 - a thread count that cannot serve is
                    continue  # not a candidate
        threads = min(tried, key=lambda t: tried[t].request_s.median)
        chosen_fig = tried[threads]
        reason = (f"{reason}; server threads {threads} served fastest of "
                  f"{sorted(k for k in tried if k is not None)}")
        figures = [f.model_copy(update={"served": chosen_fig.model_dump(mode="json")})
                   if f.trial == winner else f for f in figures]
    new = report.model_copy(update={"finalists": figures, "winner_trial": winner,
                                    "reason": reason})
    return ServedChoice(new, records[winner], chosen_fig, threads, served_error(new))
