"""Pruning: a trial clearly slower than the best usable one stops measuring early.

The worker decides between repetitions (tuner/worker/bench.py), never inside a timed region and
without a round trip to the parent: with its ``Measure`` the parent sends the best usable
trial's per-repetition request seconds (``Measure.prune_against``; None for the drift
sentinel's re-measure, for the finalists and when pruning is off). After each kept repetition
the worker calls ``verdict`` on this trial's per-repetition request seconds so far.

The rule (``verdict``, in tuner/worker/prunerule.py where the worker imports it): prune when
at least ``MIN_REPS`` repetitions were kept and *every* one
is slower than both the best's slowest repetition plus the best's spread (max - min) and the
best's slowest times ``1 + MARGIN``. It is an order-statistics rule with a margin, not a rank
test, because a rank test cannot decide on the 2-3 repetitions a trial has: the one-sided exact
Wilcoxon signed-rank test on 2 pairs cannot go below p = 0.25 (3 pairs: 0.125), Mann-Whitney
on 3 against 2 samples not below 0.1, and optuna's ``WilcoxonPruner`` waits for more steps
than that. A t-interval on the ratio has 1-2 degrees of freedom (t = 6.3-12.7) and never
prunes. Under "no difference" (the trial's repetitions drawn from the same distribution as the
best's) and no margin, the chance that all k of its repetitions lie above all n of the best's
is 1 / C(n + k, k) (0.1 for 3 against 2); the spread and 5% margins cut it to about 1e-4 at a
2% repetition spread, 0.9% at 5% and 1.7% at 10% (normal noise, 3 against 2, simulated).
What the rule cannot see: a disturbance that slows this trial only (another process taking the
cores, a GPU clock drop); such a trial is pruned although its setting is not slower. A pruned
trial is kept as ``pruned`` with its partial figures and can be re-run in a new study.

Request seconds per repetition: while the prompt phase runs, a repetition's prompt seconds
alone (a lower bound of its request: generation only adds); in the generation phase, prompt +
generation of the repetitions whose generation has run. A lower bound can only make the trial
look faster, never prune one that the full figure would not."""

from __future__ import annotations

from tuner.errors import BadInput


def check(prune: bool | None, objective: str) -> None:
    """Pruning compares request times: asked for on the Pareto front, it is refused."""
    if objective == "pareto" and prune:
        raise BadInput("--prune compares request times; --objective pareto measures every "
                       "trial in full", hint="leave --prune out, or use --objective request")


def resolve(prune: bool | None, sampler: str, objective: str = "request") -> bool:
    """Whether a search prunes: as asked, else on for tpe and off for the grid (whose
    exhaustive figures feed the fidelity benchmark and analysis of every setting's effect).
    Never on the Pareto front: pruning compares request times, and a slower setting may be on
    the front by its memory or its generation speed."""
    check(prune, objective)
    if objective == "pareto":
        return False
    return prune if prune is not None else sampler == "tpe"
