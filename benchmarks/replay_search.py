"""Replay a fresh-machine sweep's search after its kernel build joined, with today's sampler, on
figures measured on a GPU: does the search reach the new build's best setting before its stop
rule fires? Nothing is measured here; no figure is invented either: a setting no given run
measured is counted as the slowest of the new build's measured settings (it can then only
delay a gain, never make one).

The first build's trials are taken as the last run measured them (beside the compile, every
one); the new build's settings are the same context settings with its name. Then, as the
sweep does: the sampler picks among the new build's open settings, fitted on the history, and
the stop rule (``--patience`` 10 without a 1% gain, the trials before the build joined never
counted, nor a trial that tried a value new to its build) ends the search.

    python3 benchmarks/replay_search.py --build force-cublas \\
        docs/benchmarks/run27-h100/fresh-llama3-8b-q4_k_m docs/benchmarks/run28-h100/fresh-llama3-8b-q4_k_m
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from sampler_replay import search

from tuner.results.records import TrialRecord
from tuner.search.sampler import DEFAULT_PATIENCE, Finished, TpeOrder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="folders with a trials.jsonl (the last one's "
                    "first-build trials are the history)")
    ap.add_argument("--build", required=True, help="the build that joined during the search")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    figures: dict[str, list[float]] = {}
    last: list[TrialRecord] = []
    for run in args.runs:
        last = [TrialRecord.model_validate_json(line)
                for line in (run / "trials.jsonl").read_text().splitlines() if line.strip()]
        for r in last:
            if r.objective is not None:
                figures.setdefault(r.spec_key, []).append(r.objective)
    measured = {k: statistics.median(v) for k, v in figures.items()}
    first = [r for r in last if r.spec.model.build != args.build]
    joined = {}
    for r in first:
        s = r.spec.model_copy(update={"model": r.spec.model.model_copy(update={"build": args.build})})
        joined[s.key()] = s
    plan = {**{r.spec_key: r.spec for r in first}, **joined}
    slowest = max(measured[k] for k in joined if k in measured)
    run = search(TpeOrder(plan, seed=args.seed), list(joined),
                 lambda k: measured.get(k, slowest),
                 [Finished(r.spec_key, r.objective) for r in first], until=DEFAULT_PATIENCE)
    print(f"| trial | {args.build} setting | request s (median of the runs) |")
    print("|---|---|---|")
    for i, k in enumerate(run.picks, 1):
        value = measured.get(k)
        shown = f"{value:.4f}" if value is not None else f"not measured: counted {slowest:.4f}"
        print(f"| {i} | {plan[k].label()} | {shown} |")
    without = run.stale[-1] if run.stale else 0
    why = (f"stopped: {without} trials without a 1% gain" if without >= DEFAULT_PATIENCE
           else "every setting measured")
    unmeasured = sum(k not in measured for k in run.picks)
    best = min((k for k in run.picks if k in measured), key=measured.__getitem__)
    known = min(measured[k] for k in joined if k in measured)
    print(f"\n{why}; {len(run.picks)} {args.build} trials ({unmeasured} not measured in "
          f"the runs given); best {plan[best].label()} {measured[best]:.4f} s, "
          f"the best any run measured for this build {known:.4f} s "
          f"({measured[best] / known - 1:+.1%})")


if __name__ == "__main__":
    main()
