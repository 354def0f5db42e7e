"""What a sweep hands back to its caller: the trials it ran, the study's records, the best,
the config written (or why none), and the times and reasons the summary prints."""

from __future__ import annotations

from dataclasses import dataclass, field

from tuner.deploy.prodconfig import WrittenConfig
from tuner.evidence.deaths import Cause
from tuner.machine.cpuload import OtherLoad
from tuner.results.records import FinalistReport, TrialRecord, WorkerDrift


@dataclass
class SweepResult:
    study: str
    ran: list[TrialRecord]
    records: list[TrialRecord]
    best: TrialRecord | None
    written: WrittenConfig | None
    no_config_reason: str | None
    storage: str  # the optuna storage URL holding the study (tuner/results/studystore.py)
    retried: int = 0
    finalists: FinalistReport | None = None
    drifts: list[WorkerDrift] = field(default_factory=list)
    deferred: bool = False  # another live sweep of the study writes the config when it ends
    sampler: str = "grid"
    stop_reason: str = ""  # why the search ended (or paused)
    seen: int = 0  # settings of the plan with a finished trial
    planned: int = 0  # settings in the plan
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per phase
    objective: str = "request"
    front: list[TrialRecord] = field(default_factory=list)  # --objective pareto: the front
    causes: list[Cause] = field(default_factory=list)  # why every trial of a build died alike
    others: OtherLoad | None = None  # other processes' share of the CPUs while it measured
