"""A repeated measurement's statistics (median and spread of the kept samples), shared by the
trial records and the per-token breakdown."""

from __future__ import annotations

import statistics

from tuner.specs import Frozen


class Stat(Frozen):
    """A repeated measurement: median and spread of the kept samples (warm-up excluded)."""

    median: float
    min: float
    max: float
    stdev: float
    samples: list[float]

    @classmethod
    def of(cls, samples: list[float]) -> Stat:
        if not samples:
            raise ValueError("no samples")
        return cls(
            median=statistics.median(samples),
            min=min(samples),
            max=max(samples),
            stdev=statistics.stdev(samples) if len(samples) > 1 else 0.0,
            samples=list(samples),
        )

    @property
    def rel_spread(self) -> float:
        """(max - min) / median: how far apart the repetitions were."""
        return (self.max - self.min) / self.median if self.median else 0.0


def widest_spread(*stats: Stat | None) -> float:
    """The largest ``rel_spread`` among ``stats`` (None skipped; 0.0 when none)."""
    return max((s.rel_spread for s in stats if s is not None), default=0.0)
