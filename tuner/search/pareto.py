"""The multi-objective view of a study (``tuner sweep --objective pareto``): prompt speed,
generation speed and GPU memory, and the trials no other trial beats on all of them.

An axis is used only where every point has a value: GPU memory is not measured on a CPU, so a
CPU study's front is over the two speeds. The search (tuner/search/sampler.py) fits TPE on these
axes and stops when the front has not moved for a while; the report lists the front."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from tuner.results.records import TrialRecord

Objective = Literal["request", "pareto"]
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Axis:
    name: str
    label: str
    maximize: bool


# The order of the values in every point below.
AXES = (Axis("pp_tps", "prompt t/s", True), Axis("tg_tps", "generation t/s", True),
        Axis("gpu_mib", "GPU MiB", False))
Point = tuple[float | None, ...]  # one value per axis of AXES, None where not measured


def point_of(record: TrialRecord) -> Point | None:
    """A measured trial's values on every axis (None for a trial without a measurement)."""
    m = record.measurement
    if m is None:
        return None
    return (m.pp_tps.median if m.pp_tps else None, m.tg_tps.median if m.tg_tps else None,
            m.gpu_peak_mib)


def usable_axes(points: Iterable[Point]) -> list[int]:
    """The indices of the axes every point has a value for."""
    pts = list(points)
    return [i for i in range(len(AXES)) if pts and all(p[i] is not None for p in pts)]


def _better_or_equal(a: float, b: float, axis: Axis, slack: float = 0.0) -> bool:
    """``a`` is at least as good as ``b`` on ``axis``, within ``slack`` (relative)."""
    return a >= b * (1 - slack) if axis.maximize else a <= b * (1 + slack)


def dominates(a: Point, b: Point, axes: Sequence[int], slack: float = 0.0) -> bool:
    """``a`` is at least as good as ``b`` on every axis (within ``slack``) and, without slack,
    strictly better on one."""
    if not all(_better_or_equal(a[i], b[i], AXES[i], slack) for i in axes):  # type: ignore[arg-type]
        return False
    return slack > 0 or any(a[i] != b[i] for i in axes)


def non_dominated(points: dict[K, Point], axes: Sequence[int] | None = None) -> list[K]:
    """The keys of the points no other point dominates, in their order."""
    axes = usable_axes(points.values()) if axes is None else axes
    if not axes:
        return []
    return [k for k, p in points.items()
            if not any(dominates(q, p, axes) for j, q in points.items() if j != k)]


def front(records: Iterable[TrialRecord]) -> list[TrialRecord]:
    """The usable trials on the Pareto front, fastest prompt first."""
    points = {r.number: (r, p) for r in records if r.usable and (p := point_of(r)) is not None}
    keep = non_dominated({n: p for n, (_, p) in points.items()})
    return sorted((points[n][0] for n in keep),
                  key=lambda r: -(r.measurement.pp_tps.median if r.measurement else 0))


def stagnation(points: Iterable[Point | None], min_gain: float, explore: int = 0,
               novel: Sequence[bool] = ()) -> int:
    """Finished trials since the front last gained a point that no earlier point comes within
    ``min_gain`` of on every axis (in the order they finished; a failed trial, None, counts as
    one without a gain). The first ``explore`` trials, and each trial ``novel`` marks (it tried
    a value its build had not), never count as trials without a gain."""
    seen: list[Point] = []
    since = 0
    for i, p in enumerate(points):
        if p is not None:
            axes = usable_axes([*seen, p])
            gain = bool(axes) and not any(dominates(q, p, axes, slack=min_gain) for q in seen)
            seen.append(p)
            if gain:
                since = 0
                continue
        if i >= explore and not (i < len(novel) and novel[i]):
            since += 1
    return since


def describe(records: Sequence[TrialRecord]) -> str:
    """One line: the front's trials with their values on the axes measured."""
    pts = {r.number: point_of(r) for r in records}
    axes = usable_axes(p for p in pts.values() if p is not None)
    parts = []
    for r in records:
        p = pts[r.number]
        if p is None:
            continue
        values = ", ".join(f"{p[i]:,.0f} {AXES[i].label}" if AXES[i].name != "tg_tps"
                           else f"{p[i]:,.1f} {AXES[i].label}" for i in axes)
        parts.append(f"#{r.number} ({values})")
    return "; ".join(parts)
