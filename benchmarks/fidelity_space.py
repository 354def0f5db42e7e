"""The tuner against llama-bench over a whole sweep's space (or several sweeps' of one model), on a CUDA machine, in the same
machine session: for every setting the sweep measured, llama-bench of the same build runs
pp<P> at depth 0 and tg<G> at depth P (the sweep's workload) with the same batch sizes, flash
attention and KV types, one llama-bench process per setting and test.

    python benchmarks/fidelity_space.py --model M --results DIR --builds builds --out O

One llama-bench process is no 3% reference for a prompt of tens of milliseconds: fresh
processes of the same config differ in prompt speed by up to 8%, and some run whole at half
speed (run 5, docs/benchmarks/probes/process_spread.py). So the configs that the checks compare (the
tuner's top 10, the tuner's choice and llama-bench's own best 3) get ``--procs`` fresh processes
per test in all, interleaved, and their reference is the median over processes of each
process's median (a slow process counts once, not as the reference). The tuner's top 10 and
choice are measured first, closest in time to the sweep's own figures of them.

Prints, last, three checks and a table: every config of the tuner's top 10 within 3% of
llama-bench in prompt and generation speed (the top 10 and figures of the sweep's confirmation
when it ran: medians over processes, as llama-bench's reference is; else the search's
single-process figures, also shown); the tuner's final choice (the finalists' winner)
within 2% of llama-bench's best request time over the space; the drift sentinel of every worker.
Writes fidelity_space.json (for the first --results; fidelity_space-<folder>.json for the others)
with every figure and the llama-bench command lines."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tuner.results.records import TrialRecord, TrialState  # noqa: E402
from tuner.results.studystore import default_storage, require_study  # noqa: E402

Key = tuple[str, int, int, bool, str, str]


def key_of(r: TrialRecord) -> Key:
    c = r.spec.context
    return (r.spec.model.build, c.n_batch, c.n_ubatch, c.flash_attn, c.type_k, c.type_v)


def llama_bench(binary: Path, lib: Path, model: Path, batches: list[int], ubatches: list[int],
                fa: bool, tk: str, tv: str, test: list[str], reps: int,
                threads: int | None, wrap: list[str] | None = None,
                extra: list[str] | None = None) -> tuple[list[dict], str]:
    """One llama-bench process (``wrap``: a command it runs under, e.g. taskset; ``extra``: more
    llama-bench options, e.g. ``--poll 0``); its JSON rows and its command line."""
    cmd = [*(wrap or []), str(binary), "-m", str(model), "-ngl", "99", "-b", ",".join(map(str, batches)),
           *(["-t", str(threads)] if threads else []),
           "-ub", ",".join(map(str, ubatches)), "-fa", "1" if fa else "0", "-ctk", tk,
           "-ctv", tv, "-r", str(reps), "-o", "json", *(extra or []), *test]
    env = {**os.environ, "LD_LIBRARY_PATH": f"{lib}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"llama-bench failed ({' '.join(cmd)}): {proc.stderr[-1500:]}")
    return json.loads(proc.stdout), " ".join(cmd)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--results", type=Path, required=True, action="append",
                    help="a study's results folder; repeat for several studies of the same model "
                    "and workload (one llama-bench pass covers the union of their settings)")
    ap.add_argument("--builds", type=Path, default=Path("builds"))
    ap.add_argument("--bench", action="append", default=[], metavar="BUILD=DIR",
                    help="llama-bench of BUILD from DIR instead of --builds (DIR/bin/llama-bench; "
                    "its library search path in DIR/LD_LIBRARY_PATH, else DIR/lib): e.g. "
                    "installed=the folder benchmarks/installed_bench.py made")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--procs", type=int, default=3,
                    help="fresh llama-bench processes per test for the compared configs")
    ap.add_argument("--lb-args", default="",
                    help="more llama-bench options, e.g. '--poll 0' (its CPU threads spin-wait "
                    "at --poll 50 by default; the tuner's contexts use llama.cpp's default pool)")
    a = ap.parse_args()
    benches = {b: Path(d) for b, _, d in (x.partition("=") for x in a.bench)}
    a.out.mkdir(parents=True, exist_ok=True)
    stores = [require_study(default_storage(r)) for r in a.results]
    every_record = [r for s in stores for r in s.records()]
    # llama-bench's best is sought over every setting the sweeps tried, pruned ones included.
    tried = [r for r in every_record if r.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    usable = [r for r in every_record if r.usable]
    label_of = {key_of(r): r.spec.label() for r in tried}
    wl = usable[0].workload
    P, G = wl.prompt_tokens, wl.gen_tokens
    # llama-bench runs with the CPU threads the tuner's workers ran with (they record them).
    threads = next((r.measurement.threads for r in usable
                    if r.measurement and r.measurement.threads), None)
    # Per config and side ("pp", "tg"): each llama-bench process's median of its repetitions.
    per_proc: dict[Key, dict[str, list[float]]] = defaultdict(lambda: {"pp": [], "tg": []})
    commands: list[str] = []
    backends: dict[str, set[str]] = defaultdict(set)  # what each build's llama-bench ran on
    no_bench: set[str] = set()  # builds without a llama-bench: their settings are not compared

    def measure(k: Key) -> None:
        build, nb, nu, fa, tk, tv = k
        folder = benches.get(build, a.builds / build)
        binary = folder / "bin" / "llama-bench"
        if not binary.is_file():  # e.g. the installed package's library: no llama-bench
            no_bench.add(build)
            return
        search = folder / "LD_LIBRARY_PATH"
        lib = Path(search.read_text().strip()) if search.is_file() else folder / "lib"
        for test in (["-p", str(P), "-n", "0", "-d", "0"],
                     ["-p", "0", "-n", str(G), "-d", str(P)]):
            rows, cmd = llama_bench(binary, lib, a.model, [nb], [nu], fa, tk, tv, test,
                                    a.reps, threads, extra=a.lb_args.split())
            commands.append(cmd)
            for row in rows:
                backends[build].add(f"{row.get('backends')} on {row.get('gpu_info') or 'no GPU'}")
                ts = row.get("samples_ts") or [row["avg_ts"]]
                per_proc[k]["pp" if row["n_prompt"] else "tg"].append(statistics.median(ts))
        # Written as it goes: a lease that ends mid-pass (run 21) still leaves what was measured.
        (a.out / "fidelity_partial.json").write_text(json.dumps(
            {"per_process": [[*key, v] for key, v in per_proc.items()], "commands": commands}))

    def bench_of(k: Key) -> dict[str, float]:
        return {side: statistics.median(xs) for side, xs in per_proc[k].items() if xs}

    def lb_request(k: Key) -> float:
        b = bench_of(k)
        return P / b["pp"] + G / b["tg"] if "pp" in b and "tg" in b else float("inf")

    # Pass 1, right after the sweep: the tuner's top 10 (confirmed, else by the search's
    # figures) and its choice, in every study, --procs fresh processes each, interleaved (A B C
    # ... A B C). The sweep's confirmation measured them in its last minutes; the machine's
    # level moves over minutes (runs 7, 17 and 18), so their reference is taken first.
    tuner_top: list[Key] = []
    for store in stores:
        records = [r for r in store.records() if r.usable]
        by_objective = sorted(records, key=lambda r: r.objective or float("inf"))
        tuner_top += [key_of(r) for r in by_objective[:10]]
        final = store.finalists()
        if final:
            number = {r.number: r for r in records}
            tuner_top += [key_of(number[c.trial]) for c in final.confirmed[:10] if c.trial in number]
            tuner_top += [key_of(r) for r in records if r.number == final.winner_trial]
    tuner_top = list(dict.fromkeys(tuner_top))
    for _ in range(a.procs):
        for k in tuner_top:
            measure(k)
    # Pass 2, the rest of the space: one llama-bench process per setting and test (llama-bench
    # makes all its contexts in one process, and on an H100 the later ones ran slower: run 3).
    space = sorted({key_of(r) for r in tried})
    for k in space:
        if k not in tuner_top:
            measure(k)
    # Pass 3: llama-bench's own best 3 over the space get --procs processes too.
    lb_best3 = [k for k in sorted(space, key=lb_request)[:3] if k not in tuner_top]
    for _ in range(a.procs - 1):
        for k in lb_best3:
            measure(k)
    compared = tuner_top + lb_best3
    a.first_store = stores[0]
    a.no_bench = no_bench
    a.backends = backends
    for results, store in zip(a.results, stores):
        report(results, store, a, P, G, threads, space, bench_of, lb_request, label_of, tried,
               per_proc, compared, commands)


def report(results: Path, store: Any, a: argparse.Namespace, P: int, G: int, threads: int | None,
           space: list[Key], bench_of: Any, lb_request: Any, label_of: dict[Key, str],
           tried: list[TrialRecord], per_proc: dict[Key, dict[str, list[float]]],
           compared: list[Key], commands: list[str]) -> None:
    """One study's checks against the llama-bench figures: fidelity-<folder>.md and
    fidelity_space[-<folder>].json (the first study's json keeps the plain name)."""
    study = store.name
    records = [r for r in store.records() if r.usable]
    final = store.finalists()
    bench = {k: bench_of(k) for k in space}
    table: list[dict[str, Any]] = []
    for r in records:
        lb = bench.get(key_of(r), {})
        m = r.measurement
        if m is None or "pp" not in lb or "tg" not in lb:
            continue
        lb_req = P / lb["pp"] + G / lb["tg"]
        table.append({
            "trial": r.number, "label": r.spec.label(), "objective": r.objective,
            "tuner_pp": m.pp_tps.median, "lb_pp": lb["pp"],
            "pp_diff": (m.pp_tps.median - lb["pp"]) / lb["pp"],
            "tuner_tg": m.tg_tps.median if m.tg_tps else None, "lb_tg": lb["tg"],
            "tg_diff": ((m.tg_tps.median - lb["tg"]) / lb["tg"]) if m.tg_tps else None,
            "lb_request_s": lb_req, "worker": r.worker_id,
            "lb_pp_processes": per_proc[key_of(r)]["pp"],
            "lb_tg_processes": per_proc[key_of(r)]["tg"],
            "throttled": m.throttled,
            "clocks": m.clocks.model_dump() if m.clocks else None,
        })
    table.sort(key=lambda x: x["objective"])
    # The tuner's top 10: its confirmed ranking when the sweep confirmed its leaders (medians
    # over the search trial's process and fresh workers, tuner/search/finalists.py), else the
    # search's single-process figures.
    by_trial = {r.number: r for r in records}
    confirmed = []
    for c in (final.confirmed if final else [])[:10]:
        k = key_of(by_trial[c.trial]) if c.trial in by_trial else None
        lb = bench.get(k, {}) if k is not None else {}
        if k is not None and "pp" in lb and "tg" in lb and c.tg_tps is not None:
            confirmed.append({
                "trial": c.trial, "label": c.label, "processes": c.processes,
                "tuner_request_s": c.request_seconds.median,
                "tuner_pp": c.pp_tps.median, "tuner_pp_processes": c.pp_tps.samples,
                "tuner_tg": c.tg_tps.median, "tuner_tg_processes": c.tg_tps.samples,
                "lb_pp": lb["pp"], "lb_tg": lb["tg"], "lb_request_s": P / lb["pp"] + G / lb["tg"],
                "pp_diff": c.pp_tps.median / lb["pp"] - 1, "tg_diff": c.tg_tps.median / lb["tg"] - 1,
                "lb_pp_processes": per_proc[k]["pp"], "lb_tg_processes": per_proc[k]["tg"]})
    top = table[:10]
    worst_single = max(max(abs(t["pp_diff"]), abs(t["tg_diff"] or 0)) for t in top)
    worst_top = (max(max(abs(t["pp_diff"]), abs(t["tg_diff"])) for t in confirmed)
                 if confirmed else worst_single)
    best_key = min(space, key=lb_request)
    own = [r for r in store.records() if r in tried]
    lb_best = {"key": list(best_key), "label": label_of[best_key], "lb_request_s": lb_request(best_key),
               "trial": next((r.number for r in own if key_of(r) == best_key), None)}
    # The finalists' own figures (fresh workers, interleaved) against llama-bench's.
    fin_rows = []
    for f in (final.finalists if final else []):
        lb = bench.get(key_of(by_trial[f.trial]), {}) if f.trial in by_trial else {}
        if "pp" in lb and "tg" in lb and f.tg_tps is not None:
            fin_rows.append({"trial": f.trial, "label": f.label, "rounds": f.rounds,
                             "pp": f.pp_tps.value, "tg": f.tg_tps.value, "lb_pp": lb["pp"],
                             "lb_tg": lb["tg"], "pp_diff": f.pp_tps.value / lb["pp"] - 1,
                             "tg_diff": f.tg_tps.value / lb["tg"] - 1})
    chosen = next((t for t in table if final and t["trial"] == final.winner_trial), None) \
        if final else table[0]
    if chosen is None:  # the winner's build has no llama-bench: no reference for it
        win = by_trial[final.winner_trial]
        chosen = {"trial": win.number, "label": win.spec.label(), "lb_request_s": float("nan")}
    choice_gap = chosen["lb_request_s"] / lb_best["lb_request_s"] - 1
    benched = sum(k[0] not in a.no_bench for k in space)
    uncompared = [c for c in (final.confirmed if final else [])[:10]
                  if c.trial in by_trial and by_trial[c.trial].spec.model.build in a.no_bench]
    drifts = store.drifts()
    lines = [f"## {study} ({results}): tuner vs llama-bench (same builds, same session), "
             f"pp{P} @ depth 0 and tg{G} @ depth {P}, medians of {a.reps} repetitions, "
             f"{threads or 'default'} CPU threads; llama-bench of the compared configs: median "
             f"over {a.procs} fresh processes (others: 1)", "",
             "llama-bench ran on: " + "; ".join(f"{b}: {', '.join(sorted(v))}"
                                               for b, v in sorted(a.backends.items())), "",
             "| rank | trial | settings | tuner pp t/s | llama-bench pp (processes min-max) | diff "
             "| tuner tg t/s | llama-bench tg | diff | tuner request s | llama-bench request s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def spread(xs: list[float]) -> str:
        return f" ({min(xs):,.0f}-{max(xs):,.0f}, {len(xs)})" if len(xs) > 1 else ""

    for i, t in enumerate(table[:10], 1):
        lines.append(f"| {i} | #{t['trial']} | {t['label']} | {t['tuner_pp']:,.0f} | "
                     f"{t['lb_pp']:,.0f}{spread(t['lb_pp_processes'])} | "
                     f"{t['pp_diff'] * 100:+.1f}% | {t['tuner_tg']:,.1f} | "
                     f"{t['lb_tg']:,.1f} | {(t['tg_diff'] or 0) * 100:+.1f}% | "
                     f"{t['objective']:.4f} | {t['lb_request_s']:.4f} |")
    every = max(max(abs(t["pp_diff"]), abs(t["tg_diff"] or 0)) for t in table)
    if confirmed:
        lines += ["", "The tuner's top 10 as it ranks them after the confirmation: medians over "
                  "processes (the search trial's and each fresh worker's median), against "
                  "llama-bench's median over processes", "",
                  "| rank | trial | settings | processes | tuner pp t/s (processes) | llama-bench pp "
                  "| diff | tuner tg t/s (processes) | llama-bench tg | diff |",
                  "|---|---|---|---|---|---|---|---|---|---|"]

        def procs(xs: list[float], fmt: str) -> str:
            return ", ".join(format(x, fmt) for x in xs)

        for i, t in enumerate(confirmed, 1):
            lines.append(f"| {i} | #{t['trial']} | {t['label']} | {t['processes']} | "
                         f"{t['tuner_pp']:,.0f} ({procs(t['tuner_pp_processes'], ',.0f')}) | "
                         f"{t['lb_pp']:,.0f}{spread(t['lb_pp_processes'])} | "
                         f"{t['pp_diff'] * 100:+.1f}% | {t['tuner_tg']:,.1f} "
                         f"({procs(t['tuner_tg_processes'], ',.1f')}) | {t['lb_tg']:,.1f} | "
                         f"{t['tg_diff'] * 100:+.1f}% |")
    what = ("confirmed figures, medians over processes" if confirmed
            else "the search's single-process figures")
    lines += ["", f"top 10 ({what}): largest difference {worst_top * 100:.2f}% (goal <= 3%); "
              f"the search's single-process figures of its top 10: {worst_single * 100:.2f}%, "
              f"over all {len(table)} configs: {every * 100:.2f}%",
              f"final choice #{chosen['trial']} ({chosen['label']}): llama-bench request "
              f"{chosen['lb_request_s']:.4f} s vs llama-bench's best over the space "
              f"#{lb_best['trial']} ({lb_best['label']}) {lb_best['lb_request_s']:.4f} s: "
              f"{choice_gap * 100:+.2f}% (goal <= 2%; llama-bench ran all {benched} settings "
              "the sweep tried, pruned ones included"
              + (f", of {len(space)}: none of build {', '.join(sorted(a.no_bench))}"
                 if a.no_bench else "") + ")"]
    if a.no_bench:
        lines += [f"not compared (no llama-bench for build {', '.join(sorted(a.no_bench))}): "
                  f"{len(uncompared)} of the confirmed top 10"
                  + (": " + ", ".join(f"#{c.trial} {c.label}" for c in uncompared)
                     if uncompared else "")]
    if final:
        lines += [f"finalists: {final.reason}", "",
                  "| finalist | settings | rounds | pp t/s (fresh workers) | llama-bench pp | diff "
                  "| tg t/s | llama-bench tg | diff |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| #{f['trial']} | {f['label']} | {f['rounds']} | {f['pp']:,.0f} | "
                  f"{f['lb_pp']:,.0f} | {f['pp_diff'] * 100:+.1f}% | {f['tg']:,.1f} | "
                  f"{f['lb_tg']:,.1f} | {f['tg_diff'] * 100:+.1f}% |" for f in fin_rows]
    lines += ["", "| worker | trials | first | pp start -> end | tg start -> end | drift pp / tg "
              "| noise | significant |", "|---|---|---|---|---|---|---|---|"]
    for d in drifts:
        lines.append(f"| {d.worker_id} | {d.trials} | #{d.first_trial} | {d.pp_tps_start:,.0f} -> "
                     f"{d.pp_tps_end:,.0f} | {d.tg_tps_start:,.1f} -> {d.tg_tps_end:,.1f} | "
                     f"{(d.pp_drift or 0) * 100:+.1f}% / {(d.tg_drift or 0) * 100:+.1f}% | "
                     f"{d.noise * 100:.1f}% | {'yes' if d.significant else 'no'} |")
    throttled = sum(1 for t in table if t["throttled"])
    lines += ["", f"{len(drifts)} workers, {sum(d.significant for d in drifts)} drifted beyond "
              f"noise; {throttled} trials measured while throttled"]
    # Two sweeps of one model and workload share a study name: their folders tell them apart.
    tag = results.name
    name = "fidelity_space.json" if store is a.first_store else f"fidelity_space-{tag}.json"
    (a.out / name).write_text(json.dumps({
        "study": study, "table": table, "finalist_figures": fin_rows, "confirmed": confirmed,
        "top10_single_worst": worst_single,
        "space": [{"key": list(k), "label": label_of[k], "lb_request_s": lb_request(k),
                   **bench_of(k)} for k in space], "commands": commands, "procs": a.procs,
        "compared": [list(k) for k in compared], "top10_worst": worst_top,
        "not_compared": [c.trial for c in uncompared], "no_bench": sorted(a.no_bench),
        "all_worst": every, "choice_gap": choice_gap, "chosen": chosen, "lb_best": lb_best,
        "finalists": final.model_dump(mode="json") if final else None,
        "drift": [d.model_dump(mode="json") for d in drifts]}, indent=1))
    (a.out / f"fidelity-{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
