"""Frozen trial records: what was asked, what was measured, the placement evidence, the machine,
and how the trial ended. A record is written once, when its trial ends, and never changed."""

from __future__ import annotations

import statistics
from enum import Enum
from typing import Any

from pydantic import Field

from tuner.specs import Frozen, TrialSpec, Workload


class TrialState(str, Enum):
    COMPLETE = "complete"  # measured (verified or not: see Verification)
    INFEASIBLE = "infeasible"  # refused at load or context creation, or out of memory
    CRASHED = "crashed"  # the worker died from a signal (abort, segfault) or exited
    TIMEOUT = "timeout"  # the worker ran past its time limit and was killed
    FAILED = "failed"  # any other error raised inside the worker


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


class Measurement(Frozen):
    prompt_tokens: int
    gen_tokens: int
    pp_seconds: Stat
    tg_seconds: Stat | None
    request_seconds: Stat
    pp_tps: Stat
    tg_tps: Stat | None
    load_seconds: float
    context_seconds: float
    gpu_peak_mib: float | None = None  # NVML, this process, sampled during the trial
    gpu_total_mib: float | None = None
    unstable: bool = False  # repetitions spread over 10% of the median: flagged, not hidden


class Verification(Frozen):
    verified: bool
    summary: str = ""
    reasons: list[str] = Field(default_factory=list)


class Environment(Frozen):
    hostname: str
    platform: str
    python: str
    cpu: str
    cpu_count: int
    llama_cpp_python: str
    tuner: str
    gpus: list[dict[str, Any]] = Field(default_factory=list)
    driver: str | None = None
    cuda_driver: str | None = None
    build_name: str = "installed"
    build_lib_dir: str | None = None
    system_info: str | None = None
    model_path: str
    model_bytes: int
    model_sha256: str


class TrialRecord(Frozen):
    study: str
    trial_id: str  # unique per attempt
    number: int  # the optuna trial number
    spec_key: str
    spec: TrialSpec
    workload: Workload
    state: TrialState
    objective: float | None = None  # request seconds (median); lower is better
    measurement: Measurement | None = None
    verification: Verification = Verification(verified=False, reasons=["not measured"])
    placement: dict[str, Any] | None = None  # PlacementEvidence as data
    buffers_mib: dict[str, dict[str, float]] = Field(default_factory=dict)
    error: str | None = None
    signal: str | None = None
    log_tail: list[str] = Field(default_factory=list)
    environment: Environment | None = None
    started_at: str
    finished_at: str

    @property
    def usable(self) -> bool:
        """Measured and proven: the only records a production config may come from."""
        return (
            self.state is TrialState.COMPLETE
            and self.verification.verified
            and self.objective is not None
        )
