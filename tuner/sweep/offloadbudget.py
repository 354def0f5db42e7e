"""The time budget of a sweep whose model does not fit at full offload (issue 31: the whole
sweep of a 7-8B model at 2048 + 128 on a small GPU within 15 minutes, where one trial with most
layers on the host takes about a minute).

Chosen before any trial, and said in the sweep's first lines: fewer repetitions per trial, fewer
finalists and rounds, fewer served requests, no kernel builds compiled first. After the first completed trial, its wall time
(worker start, load and the measured runs) sizes the rest: the trial timeout, the search's
timeout (the budget less what the finalists and the served stage will take at that pace) and
the stop rule's patience (from the trials that fit in that time and the plan's number of
settings). An option the user gave explicitly is never changed; ``--offload-budget 0`` turns
the whole budget off."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from tuner.search.finalists import FinalistOptions
from tuner.search.sampler import StopRule

SWEEP_BUDGET_S = 900.0  # the 15 minutes for the whole sweep
REPETITIONS = 2  # measured runs per trial (the pruning rule needs 2)
FINALISTS = 2  # finalists, and rounds each (no confirmation rounds)
FINALIST_ROUNDS = 2
SERVED_REQUESTS = 2  # served-path requests per finalist
# The per-token breakdown of the winner, in first-trial times (run 29, 8B with 17 of 37 layers on
# the GPU: 114 s against a first trial of about 30 s). It runs only when that much of the budget is
# left: the search and the served figures come first.
BREAKDOWN_TRIALS = 4.0
TIMEOUT_FACTOR = 4.0  # a trial may take this many times the first one (fewer layers: slower)
MIN_TRIAL_TIMEOUT_S = 120.0
MIN_PATIENCE, MAX_PATIENCE = 3, 10
# The sweep options the budget may set, by the CLI's parameter names: one given explicitly
# keeps the user's value.
FLAGS = {"repetitions": "--repetitions", "trial_timeout": "--trial-timeout",
         "patience": "--patience", "timeout_s": "--timeout",
         "finalist_rounds": "--finalist-rounds", "served_requests": "--served-requests",
         "build_missing": "--build"}
KNOBS = tuple(FLAGS)


@dataclass(frozen=True)
class Sized:
    """What the first completed trial's time sets (None: the user's own value stays)."""

    trial_s: float
    trial_timeout_s: float | None
    search_s: float | None
    patience: int | None
    line: str


@dataclass
class Deadline:
    """The budget's end on the monotonic clock; the first completed trial's time once known
    (what the stages after the search are sized in)."""

    end: float
    trial_s: float | None = None

    def left(self) -> float:
        return self.end - time.monotonic()

    def allows(self, trials: float) -> bool:
        """Whether ``trials`` first-trial times are still left (yes before any trial is timed)."""
        return self.trial_s is None or self.left() >= trials * self.trial_s

    def refusal(self, what: str, trials: float) -> str:
        left = max(0.0, self.left())
        need = trials * (self.trial_s or 0.0)
        return (f"not measured: the time budget has {left:.0f} s left and {what} takes about "
                f"{need:.0f} s (--offload-budget 0: no budget)")


@dataclass(frozen=True)
class TimeBudget:
    total_s: float
    explicit: frozenset[str]

    def free(self, knob: str) -> bool:
        return knob not in self.explicit

    def apply(self, finalists: FinalistOptions, repetitions: int,
              served_requests: int) -> tuple[FinalistOptions, int, int]:
        """The finalists, repetitions and served requests under the budget."""
        if self.free("finalist_rounds") and finalists.rounds > 0:
            finalists = dataclasses.replace(
                finalists, most=min(finalists.most, FINALISTS), top=min(finalists.top, FINALISTS),
                rounds=FINALIST_ROUNDS, max_rounds=FINALIST_ROUNDS, confirm=0, confirm_rounds=0)
        if self.free("repetitions"):
            repetitions = min(repetitions, REPETITIONS)
        if self.free("served_requests"):
            served_requests = min(served_requests, SERVED_REQUESTS)
        return finalists, repetitions, served_requests

    def builds(self, build_missing: bool) -> bool:
        """No kernel builds compiled first unless --build is given: a compile takes minutes of
        the budget and the CPU cores that compute the host's layers."""
        return build_missing and not self.free("build_missing")

    def lines(self, finalists: FinalistOptions, repetitions: int, served_requests: int,
              build_missing: bool = False) -> list[str]:
        kept = sorted(k for k in KNOBS if not self.free(k))
        return [
            f"time budget: {self.total_s:.0f} s for the whole sweep (the model does not fit at "
            f"full offload, so each trial reads layers from the host): {repetitions} "
            f"repetitions per trial, finalists {finalists.most} x {finalists.rounds} rounds, "
            f"{served_requests} served requests each; the first completed trial's time sets "
            f"the trial timeout ({TIMEOUT_FACTOR:g}x it), the search's timeout and its patience"
            + ("" if build_missing else "; no kernel builds compiled first (they would take "
               "the CPU that computes the host's layers)")
            + (f"; kept as given: {', '.join(FLAGS[k] for k in kept)}" if kept else "")
            + " (--offload-budget 0: no budget)"]

    def deadline(self, started: float) -> Deadline:
        """The budget's end for a sweep that started at ``started`` (time.monotonic())."""
        return Deadline(end=started + self.total_s)

    def reserve_trials(self, finalists: FinalistOptions, served_requests: int) -> int:
        """Trial-sized steps after the search: the finalists' rounds, each finalist served
        and the winner through llama-server (the breakdown is not reserved: it runs only when
        the budget has room left, Deadline.allows)."""
        fin = finalists.most * finalists.max_rounds if finalists.rounds > 0 else 0
        served = finalists.most + 1 if finalists.rounds > 0 and served_requests > 0 else 0
        return fin + served

    def size(self, trial_s: float, elapsed_s: float, settings: int,
             finalists: FinalistOptions, served_requests: int) -> Sized:
        """The trial timeout, the search's timeout and patience from the first completed
        trial's wall time ``trial_s``, ``elapsed_s`` into the search, over ``settings``."""
        trial_s = max(trial_s, 1.0)
        timeout = max(TIMEOUT_FACTOR * trial_s, MIN_TRIAL_TIMEOUT_S) \
            if self.free("trial_timeout") else None
        # One more trial's time: the trial running when the search's timeout comes ends first
        # (run 30: the search ran 204 s against its 152).
        reserve = (self.reserve_trials(finalists, served_requests) + 1) * trial_s
        search = max(self.total_s - reserve, elapsed_s + 2 * trial_s) \
            if self.free("timeout_s") else None
        room = int(((search if search is not None else self.total_s) - elapsed_s) // trial_s)
        patience = max(MIN_PATIENCE, min(MAX_PATIENCE, room // 2, settings)) \
            if self.free("patience") else None
        parts = [f"time budget: the first completed trial took {trial_s:.0f} s"]
        if timeout is not None:
            parts.append(f"trial timeout {timeout:.0f} s")
        if search is not None:
            parts.append(f"search timeout {search:.0f} s (about {room} more trials of "
                         f"{settings} settings; {reserve:.0f} s kept for the finalists, the "
                         "served stage and the trial in flight at the timeout)")
        if patience is not None:
            parts.append(f"patience {patience}")
        return Sized(trial_s, timeout, search, patience, "; ".join(parts))

    def stop_rule(self, stop: StopRule, sized: Sized) -> StopRule:
        return dataclasses.replace(
            stop, timeout_s=sized.search_s if sized.search_s is not None else stop.timeout_s,
            patience=sized.patience if sized.patience is not None else stop.patience)


def choose(partial: bool, total_s: float | None, explicit: frozenset[str]) -> TimeBudget | None:
    """The budget when the plan says the model does not fit at full offload and a budget is
    asked for (``total_s`` > 0); None otherwise."""
    if not partial or not total_s:
        return None
    return TimeBudget(total_s=total_s, explicit=explicit)
