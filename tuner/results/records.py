"""Frozen trial records: what was asked, what was measured, the placement evidence, the machine,
and how the trial ended. A record is written once, when its trial ends, and never changed."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tuner.evidence.opplacement import OpSummary
from tuner.machine.cpuload import OtherLoad
from tuner.results.breakdown import TokenBreakdown
from tuner.results.readings import GpuClocks, TrialState
from tuner.results.stat import Stat, widest_spread
from tuner.settings import undeployable
from tuner.specs import Frozen, TrialSpec, Workload


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
    gpu_peak_mib: float | None = None  # NVML, this process, read outside the timed region
    gpu_total_mib: float | None = None
    unstable: bool = False  # repetitions spread over 10% of the median: flagged, not hidden
    clocks: GpuClocks | None = None  # NVML at the start and end of the timed work; None: no GPU
    throttled: bool = False  # a throttle reason was active at the start or end of timed work
    warmups: dict[str, int] = Field(default_factory=dict)  # discarded runs per phase (pp, tg)
    threads: int | None = None  # CPU threads llama.cpp ran with (None: records before this field)


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
    cuda_visible_devices: str | None = None  # the GPUs this sweep's workers were given
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
    ops: OpSummary | None = None  # where each graph operation ran (scheduler report); None: old
    error: str | None = None
    signal: str | None = None
    log_tail: list[str] = Field(default_factory=list)
    environment: Environment | None = None
    worker_id: str | None = None  # the worker process that measured it (drift is per worker)
    space_id: str | None = None  # the search space it was planned under (Space.space_id)
    # The kernel builds compiling (at idle CPU priority) while it was measured, if any: its
    # figures only nominate (tuner/builds/autobuild.py); None: nothing compiled beside it.
    alongside_build: list[str] | None = None
    started_at: str
    finished_at: str

    @property
    def usable(self) -> bool:
        """Measured, proven, and at values llama_cpp.server can run: the only records a
        production config may come from."""
        return (
            self.state is TrialState.COMPLETE
            and self.verification.verified
            and self.objective is not None
            and not undeployable(self.spec)
        )


class Interval(Frozen):
    """A point estimate with a confidence interval (``level``, e.g. 0.95)."""

    value: float
    low: float
    high: float
    level: float = 0.95


class WorkerDrift(Frozen):
    """The drift sentinel of one worker: its first trial's settings measured again at the end of
    its life. ``significant`` when the change is beyond both runs' noise."""

    study: str
    worker_id: str
    build: str
    first_trial: int  # optuna number of the trial re-measured
    trials: list[int]  # every trial this worker measured, in order
    pp_tps_start: float | None
    pp_tps_end: float | None
    tg_tps_start: float | None
    tg_tps_end: float | None
    pp_drift: float | None  # (end - start) / start
    tg_drift: float | None
    noise: float  # the relative change below which a drift is not told apart from noise
    significant: bool
    measured_at: str


class ServedFigures(Frozen):
    """Speed through the code path llama_cpp.server runs (``Llama.__call__`` with ``stream=True``,
    loaded by the server's own loader from the config's model entry), as a client sees it.
    Unlike the raw decode loop (``Measurement``, comparable with llama-bench), this includes the
    per-token Python work: sampling, detokenising, stop checks, streaming. ``source`` says where
    it was measured: ``worker`` (a spawned process, no HTTP), ``server`` (over HTTP) or
    ``llama-server`` (llama.cpp's C++ server over HTTP, tuner/deploy/llamaserver.py)."""

    source: Literal["worker", "server", "llama-server"]
    requests: int  # measured requests, after ``warmup`` discarded ones
    warmup: int = 1
    prompt_tokens: int  # the workload's, per request, BOS included (see prompt_lengths)
    gen_tokens: int  # per request, exactly (every end-of-generation token biased away)
    # what each request asked; 1 for a prompt-only workload (gen_tokens 0), whose figure is
    # the time to first token (the server reads max_tokens 0 as "until the context is full")
    max_tokens: int | None = None
    n_threads: int | None = None  # the server-side thread settings these were measured with
    n_threads_batch: int | None = None
    ttft_s: Stat  # request sent -> first streamed token
    gen_tps: Stat | None  # (gen_tokens - 1) / (last token - first token); None when gen < 2
    request_s: Stat  # request sent -> last token, as a client sees it
    max_prefix_reuse: int = 0  # longest token prefix a prompt shared with the one before it
    unstable: bool = False  # a figure's (max - min) / median above 10%: flagged, not hidden
    measured_at: str = ""
    # Tokens of each measured prompt (BOS included) where the vocabulary could not make exactly
    # ``prompt_tokens`` (the nearest below it); None: every prompt was exact (or an older record).
    prompt_lengths: list[int] | None = None
    forced_prefix: int | None = None  # tokens every prompt must share (BOS, a space prefix)

    @property
    def prompt_note(self) -> str | None:
        """Why the prompts are not exactly the workload's, or None when they are."""
        if not self.prompt_lengths:
            return None
        lo, hi = min(self.prompt_lengths), max(self.prompt_lengths)
        span = f"{lo}" if lo == hi else f"{lo}-{hi}"
        return (f"prompts of {span} tokens, not {self.prompt_tokens}: the nearest this "
                "vocabulary makes")

    def beats(self, other: ServedFigures) -> bool:
        """Faster than ``other`` beyond both spreads: this one's slowest request beats the
        other's median and its median beats the other's fastest."""
        return (self.request_s.max < other.request_s.median
                and self.request_s.median < other.request_s.min)

    def summary(self) -> str:
        """One line: "ttft 0.122 s, gen 171.5 tok/s (106.0-198.0), request 0.87 s"."""
        parts = [f"ttft {self.ttft_s.median:.3f} s ({self.ttft_s.min:.3f}-{self.ttft_s.max:.3f})"]
        if self.gen_tps is not None:
            g = self.gen_tps
            parts.append(f"gen {g.median:.1f} tok/s ({g.min:.1f}-{g.max:.1f})")
        parts.append(f"request {self.request_s.median:.3f} s")
        note = f"; {self.prompt_note}" if self.prompt_note else ""
        only = ", prompt only: max_tokens 1" if self.gen_tokens == 0 else ""
        return ", ".join(parts) + f" [{self.source}, {self.requests} requests{only}{note}]"


class FinalistFigures(Frozen):
    """One finalist re-measured in fresh workers, interleaved with the others."""

    trial: int  # the search trial whose settings these are
    spec_key: str
    label: str
    rounds: int  # rounds it was measured in, each in a fresh worker
    samples: int  # repetitions kept over every round
    request_seconds: Interval
    pp_tps: Interval
    tg_tps: Interval | None
    ratio_to_leader: Interval  # request seconds / the leader's (1.0 for the leader)
    gpu_peak_mib: float | None
    build: str
    verified: bool
    served: dict[str, Any] | None = None  # served-path figures when measured (see deploy)


class ConfirmedFigures(Frozen):
    """One of the search's leaders measured again before the finalists are chosen. Each figure's
    samples are per-process medians: the search trial's own first (unless it was measured while
    a kernel build compiled: then only the fresh workers'), then one per fresh worker; the
    median over processes is the tuner's figure for the config. One process's prompt speed
    can sit 8% off another's for the same settings (run 5 of docs/benchmarks.md), so a single
    process's figure is not the config's."""

    trial: int
    spec_key: str
    label: str
    processes: int  # the search trial's process (unless beside a compile) and every fresh
    # worker that measured it
    request_seconds: Stat
    pp_tps: Stat
    tg_tps: Stat | None
    verified: bool  # proven in the search trial and in every fresh worker that measured it
    failed_rounds: int = 0  # fresh workers in which it did not complete (crash, timeout...)

    @property
    def proven(self) -> bool:
        """Verified in every process, and completed in every fresh worker asked: the only
        confirmed configs that may become finalists."""
        return self.verified and not self.failed_rounds


class FinalistReport(Frozen):
    """The finalists of a study and the decision between them. ``tie``: some finalist was
    proven within ``equivalent`` of the fastest (its ratio interval's top at most 1 +
    equivalent), so the lightest of those won. ``undecided``: finalists neither slower beyond
    the interval nor proven equivalent when the rounds ran out; the fastest mean was kept.
    ``reason`` says which and why."""

    study: str
    objective: str = "request_seconds"
    level: float = 0.95
    finalists: list[FinalistFigures]
    winner_trial: int
    leader_trial: int  # fastest point estimate
    tie: bool
    reason: str
    undecided: list[int] = Field(default_factory=list)
    equivalent: float | None = None  # the margin a lighter config may lose by (None: older)
    measured_at: str
    # The search's leaders re-measured in fresh workers, fastest median first; the finalists
    # were chosen from these figures (empty: no confirmation ran, or an older report).
    confirmed: list[ConfirmedFigures] = Field(default_factory=list)
    # Where each millisecond of the winner's served token goes (tuner/results/breakdown.py),
    # measured after the served stage; or why it was not (None, None: older, or not asked).
    breakdown: TokenBreakdown | None = None
    breakdown_error: str | None = None
    # The winner served by llama.cpp's llama-server (ServedFigures as JSON, or {"error": why}):
    # tuner/deploy/llamaserverfinal.py; None where the sweep did not try.
    llama_server: dict[str, Any] | None = None
    # The llama-server settings the served phase kept (tuner/deploy/llamaserverknobs.py): its
    # figures above were measured with them, and its deployment runs them.
    llama_server_flags: list[str] = Field(default_factory=list)
    # Other processes' share of the CPUs from the search's start to this decision's store
    # (tuner/machine/cpuload.py; None: not read, or an older report)
    machine_load: OtherLoad | None = None


__all__ = ["Stat", "widest_spread"]  # re-exported: declared in tuner/results/stat.py
