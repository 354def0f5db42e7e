"""What a worker reports besides its timings: how a trial ended and the GPU's clocks around its
timed work. Declared apart from the full trial record (tuner/results/records.py, which uses them)
so that a worker, which imports only these, does not build every record class (about 0.04
CPU-seconds of each of the dozens of workers a sweep starts)."""

from __future__ import annotations

from enum import Enum

from pydantic import Field

from tuner.specs import Frozen


class TrialState(str, Enum):
    COMPLETE = "complete"  # measured (verified or not: see Verification)
    INFEASIBLE = "infeasible"  # refused at load or context creation, or out of memory
    CRASHED = "crashed"  # the worker died from a signal (abort, segfault) or exited
    TIMEOUT = "timeout"  # the worker ran past its time limit and was killed
    FAILED = "failed"  # any other error raised inside the worker
    PRUNED = "pruned"  # stopped early, clearly slower than the best (tuner/search/pruning.py)


class ClockReading(Frozen):
    """One NVML reading of the GPU a worker runs on."""

    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    throttle_reasons: list[str] = Field(default_factory=list)  # NVML names, idle excluded


class GpuClocks(Frozen):
    """Clocks, temperature, power and throttle reasons just before and just after the timed
    repetitions of one trial (read outside the timed region)."""

    start: ClockReading
    end: ClockReading
