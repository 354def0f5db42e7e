"""How much one config's prompt speed varies from one llama-bench process to the next, for the
tuner's top configs of a study: K fresh llama-bench processes per config, interleaved
(A B C ... A B C), each pp<P> at depth 0 with -r R; prints every process's median.

    python docs/benchmarks/probes/process_spread.py --model M --results DIR --builds builds --top 10 --procs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))  # fidelity_space

from fidelity_space import key_of, llama_bench  # noqa: E402

from tuner.results.studystore import default_storage, require_study  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--builds", type=Path, default=Path("builds"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--procs", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    store = require_study(default_storage(a.results))
    study = store.name
    records = sorted((r for r in store.records() if r.usable),
                     key=lambda r: r.objective)[:a.top]
    P = records[0].workload.prompt_tokens
    threads = next((r.measurement.threads for r in records if r.measurement.threads), None)
    runs: dict[int, list[float]] = {r.number: [] for r in records}
    for _ in range(a.procs):
        for r in records:
            build, nb, nu, fa, tk, tv = key_of(r)
            rows, _cmd = llama_bench(a.builds / build / "bin" / "llama-bench", a.builds / build / "lib",
                                     a.model, [nb], [nu], fa, tk, tv,
                                     ["-p", str(P), "-n", "0", "-d", "0"], a.reps, threads)
            runs[r.number].append(statistics.median(rows[0]["samples_ts"]))
    lines = [f"## {study}: llama-bench pp{P} in {a.procs} fresh processes per config (-r {a.reps}), "
             "interleaved", "", "| trial | settings | tuner pp | llama-bench per process | median | "
             "min-max of processes | tuner vs median |", "|---|---|---|---|---|---|---|"]
    for r in records:
        xs = runs[r.number]
        med = statistics.median(xs)
        lines.append(f"| #{r.number} | {r.spec.label()} | {r.measurement.pp_tps.median:,.0f} | "
                     f"{' '.join(f'{x:,.0f}' for x in xs)} | {med:,.0f} | "
                     f"{(min(xs) / med - 1) * 100:+.1f}% .. {(max(xs) / med - 1) * 100:+.1f}% | "
                     f"{(r.measurement.pp_tps.median / med - 1) * 100:+.1f}% |")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "process_spread.json").write_text(json.dumps({str(k): v for k, v in runs.items()}))
    (a.out / f"process-spread-{study}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
