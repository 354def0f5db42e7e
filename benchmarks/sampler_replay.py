"""Which search order finds the best setting soonest: the sweep's (TPE after its seeds, coverage
and the best's neighbours), the same without the neighbours or without the coverage, or with
optuna's GP sampler or random picks as the model? Replayed on exhaustive grids measured on GPUs
(every setting of the space measured in full by a ``--sampler grid`` sweep), so each order's
picks are scored on real figures. Nothing is measured here and no figure is invented: every
setting a replay picks has its recorded request seconds.

Each replay runs the sweep's own order (``TpeOrder``: the seeds, then every value of every
dimension in each build, then every neighbour of the best so far, then the model) with a given
variant and seed until the space is done,
and records, for each trial, the stop rule's count (``sampler.stale``: ``min_gain`` 1%, the
seeds, the random start and the coverage never counted). From one replay it reads:

- the trials until the best so far is within 2% of the grid's best (speed at least 98% of the
  best's: seconds at most best / 0.98);
- for each patience, the trials when the stop rule fires and whether the best by then is within
  2% of the grid's best (the finalists choose among those trials).

The grid's own order (plan order, no model) is shown beside, as the sweep's ``--sampler grid``.
What a replay leaves out: pruning (a pruned trial teaches its partial objective, above the
best's slowest repetition; here it teaches its full figure) and the noise of a second
measurement (each setting has its one recorded figure, the truth here).

    python3 benchmarks/sampler_replay.py --seeds 10 \\
        docs/benchmarks/run24-h100/llama2-7b-q4_k_m-grid docs/benchmarks/run12-h100/out/qwen2.5-3b-q5_k_m-grid

The GP sampler needs torch and scipy, which tuner does not install: ``--models tpe random``
leaves it out.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import optuna

from tuner.results.records import TrialRecord, TrialState
from tuner.search.sampler import STARTUP, Finished, TpeOrder, stale
from tuner.specs import TrialSpec

TARGET = 0.98  # of the grid's best speed
PATIENCES = (5, 7, 10)


class _RandomOrder(TpeOrder):
    def model(self, history_size: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=self.seed + history_size)


class _GpOrder(TpeOrder):
    def model(self, history_size: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.GPSampler(seed=self.seed + history_size,
                                         n_startup_trials=STARTUP)


class _TpeNoNeighbours(TpeOrder):
    def _neighbour(self, open_keys: list[str], history: list[Finished]) -> str | None:
        return None


class _TpeNoCover(_TpeNoNeighbours):
    def _cover(self, open_keys: list[str], history: list[Finished]) -> str | None:
        return None


ORDERS: dict[str, Callable[[dict[str, TrialSpec], int], TpeOrder]] = {
    "tpe": lambda plan, seed: TpeOrder(plan, seed=seed),
    "tpe-noneighbours": lambda plan, seed: _TpeNoNeighbours(plan, seed=seed),
    "tpe-nocover": lambda plan, seed: _TpeNoCover(plan, seed=seed),
    "gp": lambda plan, seed: _GpOrder(plan, seed=seed),
    "random": lambda plan, seed: _RandomOrder(plan, seed=seed),
}


@dataclass(frozen=True)
class Grid:
    name: str
    plan: dict[str, TrialSpec]  # plan order
    seconds: dict[str, float]

    @property
    def bar(self) -> float:
        return min(self.seconds.values()) / TARGET


@dataclass(frozen=True)
class Replay:
    picks: list[str]
    stale: list[int]  # the stop rule's count after each trial

    def reached(self, grid: Grid) -> int:
        """Trials until the best so far is within the target."""
        return next(i + 1 for i, k in enumerate(self.picks) if grid.seconds[k] <= grid.bar)

    def stop(self, patience: int) -> int:
        return next((i + 1 for i, n in enumerate(self.stale) if n >= patience), len(self.picks))

    def held(self, grid: Grid, patience: int) -> bool:
        return min(grid.seconds[k] for k in self.picks[:self.stop(patience)]) <= grid.bar


def load(folder: Path) -> Grid:
    records = sorted((TrialRecord.model_validate_json(line)
                      for line in (folder / "trials.jsonl").read_text().splitlines()
                      if line.strip()), key=lambda r: r.number)
    if not records or any(r.state is not TrialState.COMPLETE or r.objective is None
                          for r in records):
        raise SystemExit(f"{folder}: not an exhaustive grid (a trial is not complete)")
    return Grid(name=f"{folder.parent.name}/{folder.name}",
                plan={r.spec_key: r.spec for r in records},
                seconds={r.spec_key: r.objective for r in records if r.objective is not None})


def search(order: TpeOrder, open_keys: list[str], seconds: Callable[[str], float],
           history: list[Finished] | None = None, until: int | None = None) -> Replay:
    """The sweep's search loop on recorded figures: ``order`` picks among ``open_keys``, each
    pick is told its ``seconds``, and the stop rule counts (``sampler.stale``, 1% gain; the
    trials of ``history``, finished before these settings joined, never count) until every
    setting is done or, given ``until`` (a patience), the count reaches it."""
    history = list(history or [])
    start = len(history)
    open_keys = list(open_keys)
    picks: list[str] = []
    counts: list[int] = []
    while open_keys and (until is None or not counts or counts[-1] < until):
        k = order.pick(open_keys, history)
        assert k is not None
        open_keys.remove(k)
        picks.append(k)
        history.append(Finished(k, seconds(k)))
        counts.append(stale(history, order, 0.01, start))
    return Replay(picks, counts)


def replay(grid: Grid, kind: str, seed: int) -> Replay:
    if kind == "grid":
        return Replay(list(grid.plan), [0] * len(grid.plan))
    return search(ORDERS[kind](grid.plan, seed), list(grid.plan), grid.seconds.__getitem__)


def _job(args: tuple[Grid, str, int]) -> tuple[str, str, Replay]:
    grid, kind, seed = args
    return grid.name, kind, replay(grid, kind, seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("grids", nargs="+", type=Path, help="folders with a grid sweep's trials.jsonl")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--models", nargs="+", default=list(ORDERS), choices=list(ORDERS))
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    grids = [load(g) for g in args.grids]
    jobs = [(g, kind, seed) for g in grids for kind in args.models for seed in range(args.seeds)]
    out: dict[tuple[str, str], list[Replay]] = {}
    with ProcessPoolExecutor(args.jobs) as pool:
        for name, kind, r in pool.map(_job, jobs):
            out.setdefault((name, kind), []).append(r)
    print(f"{args.seeds} seeds per model; 'within 2%': the best so far at least {TARGET:.0%} of "
          "the grid's best speed, on the recorded figures\n")
    head = " | ".join(f"patience {p}: trials, within 2%" for p in PATIENCES)
    print(f"| grid (settings) | model | trials to within 2%: median (max) | {head} |")
    print("|---|---|---|" + "---|" * len(PATIENCES))
    for g in grids:
        base = replay(g, "grid", 0)
        print(f"| {g.name} ({len(g.plan)}) | plan order | {base.reached(g)} | "
              + " | ".join("-" for _ in PATIENCES) + " |")
        for kind in args.models:
            rs = out[(g.name, kind)]
            reach = [r.reached(g) for r in rs]
            cells = [f"{statistics.median(r.stop(p) for r in rs):g}, "
                     f"{sum(r.held(g, p) for r in rs)}/{len(rs)}" for p in PATIENCES]
            print(f"| | {kind} | {statistics.median(reach):g} ({max(reach)}) | "
                  + " | ".join(cells) + " |")
    print("\nAll grids:")
    for kind in args.models:
        rs = [(g, r) for g in grids for r in out[(g.name, kind)]]
        reach = [r.reached(g) / len(g.plan) for g, r in rs]
        cells = [f"patience {p}: {statistics.mean(r.stop(p) / len(g.plan) for g, r in rs):.0%} "
                 f"of the settings, {sum(r.held(g, p) for g, r in rs)}/{len(rs)} within 2%"
                 for p in PATIENCES]
        print(f"- {kind}: within 2% after {statistics.mean(reach):.0%} of the settings on "
              f"average (worst {max(reach):.0%}); " + "; ".join(cells))


if __name__ == "__main__":
    main()
