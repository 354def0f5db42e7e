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
    winner = next(r for r in records if final and r.number == final.winner_trial)
    return {"study": study, "trials": len(records), "line": line, "times": times,
            "wall_s": int(total.group(1)) if total else None, "winner": winner.number,
            "winner_key": winner.spec_key, "winner_label": winner.spec.label(),
            "reason": final.reason if final else None}


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
    grid_records = {r.number: r for r in
                    require_study(default_storage(a.grid_results)).records()}
    lb = {grid_records[t["trial"]].spec_key: t["lb_request_s"] for t in fid["table"]}
    best = min(lb.values())
    g, t = study_summary(a.grid_results, a.grid_log), study_summary(a.tpe_results, a.tpe_log)
    rows = []
    for name, s in (("grid", g), ("tpe", t)):
        gap = lb[s["winner_key"]] / best - 1 if s["winner_key"] in lb else None
        rows.append({**s, "sampler": name, "lb_request_s": lb.get(s["winner_key"]), "gap": gap})
    share = (t["wall_s"] / g["wall_s"]) if g["wall_s"] and t["wall_s"] else None
    lines = [f"## {g['study']}: tpe against the grid (same session; llama-bench best over the "
             f"space {best:.4f} s/request)", "",
             "| sampler | trials | final choice | llama-bench request s | vs llama-bench best | "
             "wall s | phases |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        gap = "n/a" if r["gap"] is None else f"{r['gap'] * 100:+.2f}%"
        lb_s = "n/a" if r["lb_request_s"] is None else f"{r['lb_request_s']:.4f}"
        phases = ", ".join(f"{k} {v:.0f} s" for k, v in r["times"].items())
        lines.append(f"| {r['sampler']} | {r['trials']} | #{r['winner']} {r['winner_label']} | "
                     f"{lb_s} | {gap} | {r['wall_s']} | {phases} |")
    lines += ["", f"tpe wall time / grid wall time: {share:.0%}" if share else "",
              f"tpe: {t['line']}", f"grid: {g['line']}"]
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "search_compare.json").write_text(json.dumps(rows, indent=1))
    (a.out / "search-compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
