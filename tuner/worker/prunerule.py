"""Pruning's rule, which the worker applies between repetitions (tuner/worker/bench.py) and the
parent knows by name (tuner/search/pruning.py holds why it is this rule): prune when at least
``MIN_REPS`` repetitions were kept and *every* one is slower than both the best's slowest
repetition plus the best's spread and the best's slowest times ``1 + MARGIN``."""

from __future__ import annotations

MIN_REPS = 2  # kept repetitions before a trial may be pruned
MARGIN = 0.05  # slower than the best's slowest by at least this share, whatever its spread


def verdict(seconds: list[float], best: list[float] | None,
            min_reps: int = MIN_REPS, margin: float = MARGIN) -> str | None:
    """Why this trial is pruned, or None to go on. ``seconds``: its per-repetition request
    seconds (or lower bounds) so far; ``best``: the best usable trial's (None: no pruning)."""
    if not best or len(seconds) < max(min_reps, 1):
        return None
    hi, lo = max(best), min(best)
    bar = max(hi + (hi - lo), hi * (1 + margin))
    if min(seconds) <= bar:
        return None
    return (f"pruned after {len(seconds)} repetition(s): each took at least {min(seconds):.4g} s, "
            f"above the best's slowest {hi:.4g} s plus its spread and {margin:.0%} "
            f"({bar:.4g} s)")
