"""Which planned setting runs next, and when the search stops.

``grid`` walks the plan in its order (every setting, baseline first). ``tpe`` asks optuna's TPE
sampler over the plan's dimensions (every field of a setting whose value differs across the
plan), fitted on the finished trials of the plan as the study's storage holds them: the storage
is the sampler's state, so a re-run, or another sweep of the same study, continues from the same
history. It starts with the baseline and llama.cpp's own defaults (n_batch 2048, n_ubatch 512,
flash attention, f16 cache; with layers or experts placed on the host, those defaults at each
cache type of the plan too: q8_0 frees room for more layers), each seed at the most on the GPU
that runs (a seed that does not load, or crashes, is tried again at the plan's next count with
less on the GPU: run 34 on an H100 lost both seeds to loads past the boundary and never measured
n_ubatch 512 at the boundary, 1.47x faster in llama-bench than the n_ubatch 256 it chose),
then tries every value of every dimension at least once in each kernel build (the coverage;
the counts of layers and of experts on the host are not covered one by one, their seeds walk
them), then (``--objective request``) every neighbour of the best setting
so far (one declared setting changed: the build counts as one, the K and V cache types together
as one; a count of layers or experts on the host only to the next count either side), then
follows the model. The coverage is per build because a build changes how the
other settings behave: on an H100 the cuBLAS build's prompt speed grows with
n_ubatch where the MMQ build's stays flat, and a model fitted on the MMQ build's trials never
proposed the large n_ubatch the cuBLAS build needed (run 28 of docs/benchmarks.md: the search
stopped 7% short). A coverage pick is the open setting that tries the most untried values of
its build, nearest to that build's best setting so far. The neighbours come before the model
because TPE, fitted on a few dozen trials, proposes far from a best whose one-step neighbour is
faster: replayed on 14 exhaustive grids measured on GPUs (benchmarks/sampler_replay.py, 10
seeds each), TPE alone stopped more than 2% behind the best in 2 of 10 replays of the
two-build grid, the neighbours first in none. A proposal outside the plan (an invalid
pair) or already done or taken goes to the nearest setting still open (fewest differing
dimensions, plan order on ties). Trials that ran out of memory, were over ``--max-vram``, crashed
or failed teach the sampler as the worst objective seen times ``PENALTY`` instead of vanishing;
a pruned trial teaches it its partial objective (above the best's slowest repetition).

``auto`` (the default) is grid for plans of at most ``AUTO_GRID`` settings, where a model has
too little to learn from, tpe above.

The stop rule: a model-based search stops when ``patience`` finished trials in a row have not
improved the best objective by more than ``min_gain``, counted only after the seeds and TPE's
random start (on an H100, a patience counted from the first trial ended a 27-setting search at
its 12th trial, before the model had proposed anything: docs/benchmarks.md run 9); a trial
that tried a value its build had not tried before never counts as one without a gain (it
explored). ``--timeout`` and ``--trials`` stop it too. ``StopState`` says why it stopped and how much of the plan it saw."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState as OptunaState

from tuner.search.pareto import AXES, Objective, Point, stagnation as pareto_stagnation, usable_axes
from tuner.settings import setting_of
from tuner.specs import TrialSpec

optuna.logging.set_verbosity(logging.WARNING)

SamplerName = Literal["auto", "grid", "tpe"]
AUTO_GRID = 16
PENALTY = 2.0
STARTUP = 5  # TPE's random start after the seeds; small plans leave little room for more
# llama.cpp's own context defaults (llama_context_default_params, flash attention auto = on
# where the backend has kernels): one of the first settings a model-based search measures.
LLAMA_DEFAULTS = {"n_batch": 2048, "n_ubatch": 512, "flash_attn": True, "type_k": "f16",
                  "type_v": "f16"}
# Where the layers run: how many on the GPU, and how many layers' experts on the host. A seed
# that does not run walks these down to the next count the plan holds; the coverage leaves them
# to the seeds, and a neighbour changes one by a single step (each count below the most that
# runs leaves the host more of the work: a trial each would spend the search's time on
# settings that are slower as a rule).
COUNTS = ("model.n_gpu_layers", "model.n_cpu_moe")
KV = ("context.type_k", "context.type_v")


def _more_on_gpu(count: int) -> float:
    """A count of layers ordered by how many it puts on the GPU: -1, every layer, above all."""
    return float("inf") if count < 0 else float(count)


def resolve(name: SamplerName, plan_size: int) -> Literal["grid", "tpe"]:
    if name == "auto":
        return "grid" if plan_size <= AUTO_GRID else "tpe"
    return name


def flat(spec: TrialSpec) -> dict[str, Any]:
    """Every field of a setting, model and context, in one flat mapping."""
    return {**{f"model.{k}": v for k, v in spec.model.model_dump().items()},
            **{f"context.{k}": v for k, v in spec.context.model_dump().items()}}


def dimensions(plan: Iterable[TrialSpec]) -> dict[str, list[Any]]:
    """The fields whose value differs across the plan, with their values in plan order."""
    return _varying(flat(spec) for spec in plan)


def _varying(points: Iterable[dict[str, Any]]) -> dict[str, list[Any]]:
    values: dict[str, list[Any]] = {}
    for point in points:
        for k, v in point.items():
            seen = values.setdefault(k, [])
            if v not in seen:
                seen.append(v)
    return {k: vs for k, vs in values.items() if len(vs) > 1}


def _hashable(v: Any) -> Any:
    return tuple(_hashable(x) for x in v) if isinstance(v, list) else v


@dataclass(frozen=True)
class Finished:
    """One finished trial of the plan, as the sampler learns from it."""

    spec_key: str
    objective: float | None  # None: out of memory, over --max-vram, crashed, timed out, failed
    point: Point | None = None  # its values on the Pareto axes (--objective pareto), or None


class TpeOrder:
    def __init__(self, plan: dict[str, TrialSpec], seed: int = 0,
                 objective: Objective = "request") -> None:
        self.plan = plan
        self.seed = seed
        self.objective = objective
        flats = {k: flat(s) for k, s in plan.items()}  # once per setting: plans can be 100k
        self.dims = _varying(flats.values())
        self.points = {k: {d: f[d] for d in self.dims} for k, f in flats.items()}
        self.counts = [d for d in COUNTS if d in self.dims]
        # Per count, its values by how much they put on the GPU: a step is one place apart.
        self.steps = {d: {v: i for i, v in enumerate(sorted(self.dims[d], key=_more_on_gpu))}
                      for d in self.counts}
        self.order = {k: i for i, k in enumerate(plan)}
        # Per setting, its values but the counts: the seed walks along settings alike in these.
        self.rest = {k: tuple(_hashable(v) for d, v in p.items() if d not in self.counts)
                     for k, p in self.points.items()}
        self.seeds = self._seeds()
        # The coverage: per setting, its build and its values (a list as a tuple, to be
        # hashable); per build, every value its settings have.
        self.cover_dims = [d for d in self.dims if d != "model.build" and d not in self.counts]
        self.values = {k: (s.model.build, tuple(_hashable(self.points[k][d])
                                                for d in self.cover_dims))
                       for k, s in plan.items()}
        self.build_values = self._walk(plan)[1]
        self.setting = {d: setting_of(d) for d in self.dims}  # kv_cache's two fields are one

    def _seeds(self) -> list[str]:
        """Per kernel build, in plan order: its first setting (the plan's first is the
        baseline) and llama.cpp's defaults; where the plan places layers or experts on the host,
        those defaults at each other cache type too. Every build is measured at its own defaults
        before the model compares builds on what it guesses."""
        out: list[str] = []
        by_build: dict[str, list[str]] = {}
        for k, spec in self.plan.items():
            by_build.setdefault(spec.model.build, []).append(k)
        for keys in by_build.values():
            defaults = [k for k in keys if all(getattr(self.plan[k].context, f) == v
                                               for f, v in LLAMA_DEFAULTS.items()
                                               if not self.counts or f not in ("type_k", "type_v"))]
            picks = [keys[0], *self._first_per_cache(defaults)] if self.counts else \
                [keys[0], *defaults[:1]]
            for k in picks:
                if self.rest[k] not in {self.rest[o] for o in out}:
                    out.append(k)
        return out

    def _first_per_cache(self, keys: list[str]) -> list[str]:
        """The first of ``keys`` at each K/V cache type, llama.cpp's f16 first."""
        first: dict[tuple[Any, ...], str] = {}
        for k in keys:
            first.setdefault(tuple(self.points[k].get(d) for d in KV), k)
        return sorted(first.values(), key=lambda k: self.plan[k].context.type_k != "f16")

    def _seed_pick(self, open_keys: list[str], history: list[Finished]) -> str | None:
        """The next seed to run: the first seed not yet measured at the most on the GPU the
        plan holds for it. From the seed on, in plan order (the most layers first), the first
        open setting alike but for its counts of layers and experts on the host, above every
        one of them that ran: a seed that did not run (did not load, crashed) is tried again
        a count lower, and one measured before the plan moved its boundary up (a calibration,
        a load past it) is measured again at the new one."""
        top: dict[tuple[Any, ...], int] = {}  # per group, the plan position of the highest run
        for h in history:
            if h.objective is not None:
                r = self.rest[h.spec_key]
                top[r] = min(top.get(r, len(self.order)), self.order[h.spec_key])
        for s in self.seeds:
            r, below = self.rest[s], top.get(self.rest[s], len(self.order))
            k = next((k for k in open_keys if self.rest[k] == r
                      and self.order[s] <= self.order[k] < below), None)
            if k is not None:
                return k
        return None

    def pick(self, open_keys: list[str], history: list[Finished]) -> str | None:
        """The next setting among ``open_keys`` (plan order), given the finished trials."""
        if not open_keys:
            return None
        history = [h for h in history if h.spec_key in self.points]
        seed = self._seed_pick(open_keys, history)
        if seed is not None:
            return seed
        if not self.dims:
            return open_keys[0]
        cover = self._cover(open_keys, history)
        if cover is not None:
            return cover
        if self.objective == "request":
            near = self._neighbour(open_keys, history)
            if near is not None:
                return near
        values = (self._pareto_values(history) if self.objective == "pareto"
                  else self._request_values(history))
        directions: list[StudyDirection] = (
            [StudyDirection.MAXIMIZE if AXES[i].maximize else StudyDirection.MINIMIZE
             for i in usable_axes(h.point for h in history if h.point is not None)]
            if self.objective == "pareto" else [StudyDirection.MINIMIZE])
        study = optuna.create_study(directions=directions or [StudyDirection.MINIMIZE],
                                    sampler=self.model(len(history)))
        dists: dict[str, BaseDistribution] = {
            d: CategoricalDistribution(vs) for d, vs in self.dims.items()}
        for h, v in zip(history, values):
            study.add_trial(optuna.trial.create_trial(
                params=self.points[h.spec_key], distributions=dists, values=v,
                state=OptunaState.COMPLETE if v is not None else OptunaState.FAIL))
        proposal = study.ask(dists).params
        return min(open_keys, key=lambda k: (self._distance(k, proposal), open_keys.index(k)))

    def model(self, history_size: int) -> optuna.samplers.BaseSampler:
        """The model that proposes a setting once the seeds, the coverage and the best's
        neighbours are done: TPE (benchmarks/sampler_replay.py compares it with optuna's GP
        sampler and with random picks on recorded GPU figures; docs/benchmarks.md says why
        TPE)."""
        return optuna.samplers.TPESampler(seed=self.seed + history_size,
                                          n_startup_trials=STARTUP, multivariate=True)

    def _walk(self, keys: Iterable[str]) -> tuple[list[bool], dict[str, list[set[Any]]]]:
        """``keys`` in order: whether each brought a value of a dimension that its build had
        not had before (a key outside the plan: False), and per build, the values seen."""
        seen: dict[str, list[set[Any]]] = {}
        novel = []
        for k in keys:
            if k not in self.values:
                novel.append(False)
                continue
            build, vals = self.values[k]
            sets = seen.setdefault(build, [set() for _ in self.cover_dims])
            novel.append(any(v not in had for had, v in zip(sets, vals)))
            for had, v in zip(sets, vals):
                had.add(v)
        return novel, seen

    def novel(self, history: list[Finished]) -> list[bool]:
        """For each finished trial, in order: whether it tried a value of a dimension that its
        build had not tried before (a trial outside the plan: False)."""
        return self._walk(h.spec_key for h in history)[0]

    def _cover(self, open_keys: list[str], history: list[Finished]) -> str | None:
        """The open setting that tries the most values its build has not tried, nearest (fewest
        differing dimensions) to the build's best finished setting, plan order on ties; None
        once every value has been tried in every build."""
        tried = self._walk(h.spec_key for h in history)[1]
        missing = {b: [vs - t for vs, t in zip(sets, tried.get(b, [set()] * len(sets)))]
                   for b, sets in self.build_values.items()}
        missing = {b: m for b, m in missing.items() if any(m)}
        if not missing:
            return None
        best: dict[str, tuple[float, tuple[Any, ...]]] = {}  # build -> its best finished
        for h in history:
            build, vals = self.values[h.spec_key]
            if h.objective is not None and (build not in best or h.objective <= best[build][0]):
                best[build] = (h.objective, vals)
        chosen, top = None, (0, 0)
        for k in open_keys:
            build, vals = self.values[k]
            m = missing.get(build)
            if m is None:
                continue
            gain = sum(v in ms for v, ms in zip(vals, m))
            if gain == 0:
                continue
            ref = best.get(build)
            near = -sum(a != b for a, b in zip(vals, ref[1])) if ref is not None else 0
            if (gain, near) > top or chosen is None:
                chosen, top = k, (gain, near)
        return chosen

    def _neighbour(self, open_keys: list[str], history: list[Finished]) -> str | None:
        """The first open setting (plan order) that changes one declared setting of the best
        finished one (the build counts as one; the K and V cache types together are one);
        None once every neighbour of the best is done."""
        finished = [h for h in history if h.objective is not None]
        if not finished:
            return None
        best = self.points[min(finished, key=lambda h: h.objective or 0.0).spec_key]
        return next((k for k in open_keys if self.settings_apart(k, best) == 1
                     and self._one_step(k, best)), None)

    def _one_step(self, key: str, point: dict[str, Any]) -> bool:
        """Whether ``key``'s counts of layers and experts on the host are each ``point``'s or
        the next value either side of it among the plan's."""
        return all(abs(self.steps[d][self.points[key][d]] - self.steps[d][point[d]]) <= 1
                   for d in self.counts)

    def settings_apart(self, key: str, point: dict[str, Any]) -> int:
        """How many declared settings of ``key`` differ from ``point``'s."""
        return len({self.setting[d] for d in self.dims if self.points[key][d] != point[d]})

    @staticmethod
    def _request_values(history: list[Finished]) -> list[list[float] | None]:
        """Request seconds; a failed trial as the worst seen times PENALTY."""
        worst = max((h.objective for h in history if h.objective is not None), default=None)
        return [[h.objective] if h.objective is not None else
                ([worst * PENALTY] if worst is not None else None) for h in history]

    @staticmethod
    def _pareto_values(history: list[Finished]) -> list[list[float] | None]:
        """Each trial's values on the axes every measured trial has; a failed trial (out of
        memory, over --max-vram, crashed) as the worst seen on each axis, made PENALTY times
        worse, so it teaches the sampler instead of vanishing."""
        points = [h.point for h in history if h.point is not None]
        axes = usable_axes(points)
        columns = {i: [float(p[i] or 0.0) for p in points] for i in axes}
        penalised = [min(columns[i]) / PENALTY if AXES[i].maximize else max(columns[i]) * PENALTY
                     for i in axes]
        return [[float(h.point[i] or 0.0) for i in axes] if h.point is not None and axes
                else (penalised or None) for h in history]

    def _distance(self, key: str, proposal: dict[str, Any]) -> int:
        point = self.points[key]
        return sum(point[d] != proposal[d] for d in self.dims)


DEFAULT_PATIENCE = 10  # for tpe when --patience is not given


@dataclass
class StopRule:
    patience: int | None = None  # finished trials without a gain above min_gain; None: default
    min_gain: float = 0.01
    timeout_s: float | None = None  # seconds of search, from the sweep's start

    def patience_for(self, kind: str) -> int | None:
        """The patience in force: the one given (0: never stop early), else DEFAULT_PATIENCE
        for tpe and none for the grid."""
        if self.patience is not None:
            return self.patience or None
        return DEFAULT_PATIENCE if kind == "tpe" else None


def stagnation(objectives: Iterable[float | None], min_gain: float, explore: int = 0,
               novel: Sequence[bool] = ()) -> int:
    """Finished trials since the best last improved by more than ``min_gain`` (in the order
    they finished; a failed trial counts as one without a gain). The first ``explore`` trials
    (the seeds and the random start), and each trial ``novel`` marks (it tried a value its
    build had not), set the best but never count as trials without a gain."""
    best, since = None, 0
    for i, x in enumerate(objectives):
        if x is not None and (best is None or x < best * (1 - min_gain)):
            best, since = x, 0
            continue
        if i >= explore and not (i < len(novel) and novel[i]):
            since += 1
        if x is not None and best is not None and x < best:
            best = x
    return since


def explore_trials(tpe: TpeOrder | None) -> int:
    """How many trials a search explores before its stop rule counts: the seeds and TPE's
    random start (none for the grid)."""
    return len(tpe.seeds) + STARTUP if tpe is not None else 0


def stale(history: list[Finished], tpe: TpeOrder | None, min_gain: float, extended_at: int = 0,
          objective: Objective = "request") -> int:
    """The stop rule's count: finished trials since the search last gained, on the best request
    time or on the Pareto front. Trials before the plan last grew (``extended_at``: a build made
    during the search added its settings), the seeds and TPE's random start, and trials that
    tried a value their build had not tried before, never count."""
    explore = max(explore_trials(tpe), extended_at)
    novel = tpe.novel(history) if tpe is not None else []
    if objective == "pareto":
        return pareto_stagnation([h.point for h in history], min_gain, explore, novel)
    return stagnation([h.objective for h in history], min_gain, explore, novel)
