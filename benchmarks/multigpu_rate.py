"""Trials per hour of a study swept on one GPU against one swept with `--gpus` on several, read
from the optuna storage of each results folder (each trial's start and completion times), so
every process's start-up (build probes, preflight) is left out of both rates alike.

    python benchmarks/multigpu_rate.py --one results-gpus-0 --many results-gpus-0-1

Prints a table: trials, the span from the first trial's start to the last one's end, trials per
hour, trials per GPU (from each record's CUDA_VISIBLE_DEVICES), and the ratio of the rates."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tuner.results.studystore import default_storage, list_studies, records_of  # noqa: E402


def rate(results: Path) -> tuple[int, float, Counter]:
    url = default_storage(results)
    name = list_studies(url)[0]
    spans = [(t.datetime_start, t.datetime_complete)
             for t in optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
             if t.state.is_finished() and t.datetime_start and t.datetime_complete]
    span = (max(end for _, end in spans if end) - min(s for s, _ in spans if s)).total_seconds()
    trials = spans
    gpus = Counter(r.environment.cuda_visible_devices if r.environment else None
                   for r in records_of(url, name))
    return len(trials), span, gpus


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", type=Path, required=True)
    ap.add_argument("--many", type=Path, required=True)
    a = ap.parse_args()
    rows = {"one GPU": rate(a.one), "--gpus": rate(a.many)}
    print("| sweep | trials | first start to last end, s | trials per hour | trials per GPU |")
    print("|---|---|---|---|---|")
    per_hour = {}
    for label, (n, span, gpus) in rows.items():
        per_hour[label] = n / span * 3600
        print(f"| {label} | {n} | {span:.1f} | {per_hour[label]:,.0f} | "
              f"{', '.join(f'gpu {g}: {c}' for g, c in sorted(gpus.items(), key=str))} |")
    print(f"\nratio: {per_hour['--gpus'] / per_hour['one GPU']:.2f}x (goal >= 1.8x)")


if __name__ == "__main__":
    main()
