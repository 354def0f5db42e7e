"""What a sweep is asked (``SweepOptions``), what it tells as it goes (``Events``), and the
study name it takes when none is given."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tuner.models.modelcheck import ModelInfo
from tuner.results.records import TrialRecord
from tuner.search.finalists import FinalistOptions
from tuner.search.pareto import Objective
from tuner.search.sampler import SamplerName, StopRule
from tuner.specs import Device, TrialSpec, Workload
from tuner.sweep import offloadbudget


class Events(Protocol):
    def planned(self, total: int, pending: int, retried: int) -> None: ...
    def started(self, spec: TrialSpec) -> None: ...
    def finished(self, record: TrialRecord, best: TrialRecord | None) -> None: ...
    def note(self, text: str) -> None: ...


class Quiet:
    """Events that nobody hears (a sweep run from code without a listener)."""

    def planned(self, total: int, pending: int, retried: int) -> None: ...
    def started(self, spec: TrialSpec) -> None: ...
    def finished(self, record: TrialRecord, best: TrialRecord | None) -> None: ...
    def note(self, text: str) -> None: ...


@dataclass
class SweepOptions:
    model: Path
    device: Device = "cuda"
    trials: int | None = None
    space: Path | None = None
    workload: Workload = field(default_factory=Workload)
    results_dir: Path = Path("results")
    study: str | None = None
    storage: str | None = None
    out: Path = Path("configs/production.yaml")
    builds_dir: Path = Path("builds")
    trial_timeout_s: float = 600.0
    load_timeout_s: float = 900.0
    trials_per_worker: int = 2  # bounded worker life: see tuner/worker/runner.py
    sentinel: bool = True  # each worker re-measures its first trial when it ends
    finalists: FinalistOptions = field(default_factory=FinalistOptions)  # rounds 0: none
    served_requests: int = 5  # served-path requests per finalist (0: raw figures only)
    sampler: SamplerName = "auto"  # tuner/search/sampler.py
    stop: StopRule = field(default_factory=StopRule)  # tuner/search/sampler.py
    seed: int = 0
    prune: bool | None = None  # stop clearly slower trials early; None: on for tpe, off for grid
    max_vram_mib: float | None = None  # tuner/search/constraints.py
    objective: Objective = "request"  # pareto: search the front (tuner/search/pareto.py)
    build_missing: bool = True  # build the kernel variants this GPU could use first (autobuild)
    # A model that does not fit at full offload: the whole sweep's time budget (None or 0: none;
    # tuner/sweep/offloadbudget.py); ``explicit``: the CLI options given, which it keeps.
    offload_budget_s: float | None = offloadbudget.SWEEP_BUDGET_S
    deadline: offloadbudget.Deadline | None = None  # set by the sweep under a time budget
    explicit: frozenset[str] = frozenset()


def default_study(info: ModelInfo, device: Device, wl: Workload) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(info.path).stem).strip("-._") or "model"
    return f"{stem[:60]}-{device}-p{wl.prompt_tokens}-g{wl.gen_tokens}-c{wl.n_ctx}"
