"""The model-based search against the exhaustive grid, on a CUDA machine, in one machine
session: reads a grid study (with benchmarks/fidelity_space.py's llama-bench figures over every
setting) and a tpe study of the same model and workload, and prints the trials each ran, the
time of each phase (from the sweep logs) and each final choice's llama-bench request time
against llama-bench's best over the space.

    python benchmarks/search_compare.py --grid-results R1 --grid-fidelity O/fidelity_space.json \
        --grid-log sweep-grid.log --tpe-results R2 --tpe-log sweep-tpe.log --out O
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.fidelity_space import key_of  # noqa: E402
from tuner.results.records import TrialState  # noqa: E402
from tuner.results.studystore import default_storage, require_study  # noqa: E402


def study_summary(results: Path, log: Path) -> dict:
    store = require_study(default_storage(results))
    study = store.name
    records = store.records()
    final = store.finalists()
    line = next((ln for ln in log.read_text().splitlines() if ln.startswith("search (")), "")
    times = {k: float(v) for k, v in re.findall(r"(\w+) (\d+) s", line.split("time:")[-1])} \
        if "time:" in line else {}
    total = re.search(r"sweep exit \d+ after (\d+) s", log.read_text())
    # The finalists' winner; a sweep stopped before its finalists: its best search trial.
    winner = next((r for r in records if final and r.number == final.winner_trial), None) or \
        min((r for r in records if r.usable), key=lambda r: r.objective or float("inf"))
    pruned = sum(1 for r in records if r.state is TrialState.PRUNED)
    return {"study": study, "trials": len(records), "pruned": pruned, "line": line,
            "times": times, "wall_s": int(total.group(1)) if total else None,
            "winner": winner.number, "winner_key": list(key_of(winner)),
            "winner_label": winner.spec.label(), "winner_objective": winner.objective,
            "reason": final.reason if final else None}


def share_of(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid-results", type=Path, required=True)
    ap.add_argument("--grid-fidelity", type=Path, required=True)
    ap.add_argument("--grid-log", type=Path, required=True)
    ap.add_argument("--tpe-results", type=Path, required=True)
    ap.add_argument("--tpe-log", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    fid = json.loads(a.grid_fidelity.read_text())
    # llama-bench's figure of every setting either sweep tried (fidelity_space.py's "space").
    lb = {tuple(x["key"]): x["lb_request_s"] for x in fid["space"]}
    best = min(lb.values())
    g, t = study_summary(a.grid_results, a.grid_log), study_summary(a.tpe_results, a.tpe_log)
    # The grid's final choice, in llama-bench's figures (the same pass measured every setting).
    grid_choice = lb.get(tuple(g["winner_key"]))
    rows = []
    for name, s in (("grid", g), ("tpe", t)):
        k = tuple(s["winner_key"])
        gap = lb[k] / best - 1 if k in lb else None
        rows.append({**s, "sampler": name, "lb_request_s": lb.get(k), "gap": gap,
                     "of_grid_best": grid_choice / lb[k] if grid_choice and k in lb else None})
    share = (t["wall_s"] / g["wall_s"]) if g["wall_s"] and t["wall_s"] else None
    lines = [f"## {g['study']}: tpe against the grid (same session; llama-bench best over the "
             f"space {best:.4f} s/request)", "",
             "| sampler | trials (pruned) | final choice | grid's choice / this (llama-bench) | "
             "llama-bench request s | vs llama-bench best | wall s | phases |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gap = "n/a" if r["gap"] is None else f"{r['gap'] * 100:+.2f}%"
        lb_s = "n/a" if r["lb_request_s"] is None else f"{r['lb_request_s']:.4f}"
        phases = ", ".join(f"{k} {v:.0f} s" for k, v in r["times"].items())
        lines.append(f"| {r['sampler']} | {r['trials']} ({r['pruned']}) | #{r['winner']} "
                     f"{r['winner_label']} | {share_of(r['of_grid_best'])} | {lb_s} | {gap} | "
                     f"{r['wall_s']} | {phases} |")
    lines += ["", f"tpe wall time / grid wall time: {share:.0%}" if share else "",
              f"tpe: {t['line']}", f"grid: {g['line']}"]
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "search_compare.json").write_text(json.dumps(rows, indent=1))
    (a.out / "search-compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
