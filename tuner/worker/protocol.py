"""The messages between the parent and its spawned workers, one validated model each.

A trial worker (tuner/worker/main.py) starts from a ``WorkerJob`` (its process argument),
answers with one ``Hello`` (a probe), ``Ready`` or ``LoadFailed``; a probe then takes one
``ProbeRequest`` (``Adopt``: become a trial worker and answer ``Ready`` or ``LoadFailed``; or
``Stop``). A trial worker takes ``WorkerRequest``s
(``Measure``, ``Stop``) on its pipe and answers each ``Measure`` with a ``WorkerReply``
(``Measured`` or ``TrialFailed``). The drift sentinel is a ``Measure`` of the worker's first
trial's settings; the operation report (tuner/worker/opproof.py) travels inside ``Measured``.
A served-path worker (tuner/worker/served.py) takes one ``ServedJob`` (``PromptsJob``,
``ServedMeasureJob`` or ``BreakdownJob``) and answers one ``ServedReply`` (``Prompts``,
``ServedRuns``, ``BreakdownTimes`` or ``ServedFailed``).

Wire format: plain JSON-able dicts (``model_dump(mode="json")``) over the multiprocessing pipe,
not the model objects. The receiver validates what arrives against its own union, so a message
of another direction, an unknown kind, a missing or an extra field is refused where it is read,
as a ``ProtocolError`` that names the message and the field (a pickled model would arrive
already built and be trusted). Every union is tagged (``op`` for requests, ``event`` for
replies); every model is frozen and forbids extra fields. This module never imports llama_cpp.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol, TypeVar

from pydantic import Field, TypeAdapter, ValidationError

from tuner.results.readings import GpuClocks, TrialState
from tuner.settings import environment
from tuner.specs import ContextSettings, Frozen, ModelSettings, Workload

T = TypeVar("T")


class ProtocolError(RuntimeError):
    """A message that is not one the receiver knows (a bug on one side, never bad input)."""


class Conn(Protocol):
    """What both ends of a ``multiprocessing.Pipe`` offer."""

    def send(self, obj: Any) -> None: ...

    def recv(self) -> Any: ...

    def close(self) -> None: ...


# ---- trial worker: the start job, requests (parent -> worker) ----

class WorkerJob(Frozen):
    """A trial worker's process argument: what to load and where to log. ``probe_only``: report
    the library (``Hello``) without loading a model, then wait for ``Adopt`` or ``Stop``."""

    model_path: str
    model_settings: ModelSettings
    lib_dir: str | None
    log_path: str
    probe_only: bool = False


WORKER_JOB = TypeAdapter(WorkerJob)


class Measure(Frozen):
    """Measure the workload on a new context of the loaded model (a trial or the sentinel).
    ``prune_against``: the best usable trial's per-repetition request seconds, to stop this
    one early when it is clearly slower (tuner/search/pruning.py); None never prunes."""

    op: Literal["measure"] = "measure"
    context: ContextSettings
    workload: Workload
    prune_against: list[float] | None = None


class Stop(Frozen):
    """Free the model and exit."""

    op: Literal["stop"] = "stop"


class Adopt(Frozen):
    """To a probe: become the trial worker of these model settings, logging from now on to
    ``log_path`` (what the probe logged so far is copied there), and load the model. The
    parent sends it only where the settings ask the environment the probe started with
    (tuner/worker/runner.py); the worker refuses it otherwise."""

    op: Literal["adopt"] = "adopt"
    model_settings: ModelSettings
    log_path: str


def adoptable(probed: ModelSettings, wanted: ModelSettings) -> bool:
    """Whether a probe started for ``probed`` can become the worker of ``wanted``: the same
    build and device, and the same environment asked before llama_cpp was imported."""
    return ((probed.build, probed.device) == (wanted.build, wanted.device)
            and environment(probed) == environment(wanted))


WorkerRequest = Annotated[Measure | Stop, Field(discriminator="op")]
REQUEST = TypeAdapter(WorkerRequest)
ProbeRequest = Annotated[Adopt | Stop, Field(discriminator="op")]
PROBE_REQUEST = TypeAdapter(ProbeRequest)


# ---- trial worker: replies (worker -> parent) ----

class GpuDevice(Frozen):
    """One GPU as NVML lists it."""

    index: int
    name: str
    memory_mib: float


class WorkerInfo(Frozen):
    """What every trial worker says first about itself and its library."""

    pid: int
    system_info: str
    supports_gpu_offload: bool
    llama_cpp_python: str
    lib_dir: str | None
    gpus: list[GpuDevice]
    driver: str | None
    hostname: str
    log: str  # llama.cpp's log so far (a probe adds what its backends printed to stderr)


class Hello(WorkerInfo):
    """A probe's only answer: the library, no model."""

    event: Literal["hello"] = "hello"


class Ready(WorkerInfo):
    """The model is loaded; the worker waits for requests."""

    event: Literal["ready"] = "ready"
    load_seconds: float
    n_layer: int


class LoadFailed(WorkerInfo):
    """llama.cpp refused to load the model; the worker exits."""

    event: Literal["load_failed"] = "load_failed"
    error: str


class Measured(Frozen):
    """A measured trial: seconds per kept repetition of each phase, and what surrounds them.
    ``pruned``: why it stopped early (tuner/search/pruning.py); its lists are then partial: fewer
    prompt repetitions and no generation ones, or fewer generation ones than prompt ones."""

    event: Literal["measured"] = "measured"
    context_seconds: float
    pp_seconds: list[float]
    tg_seconds: list[float]
    warmups: dict[str, int]  # warm-up runs per phase ("pp", "tg"), extra ones included
    threads: int
    gpu_peak_mib: float | None
    gpu_total_mib: float | None
    clocks: GpuClocks | None
    log: str  # llama.cpp's log of this trial's context
    op_log: str | None  # the scheduler's operation report (tuner/worker/opproof.py)
    op_error: str | None
    pruned: str | None = None


class TrialFailed(Frozen):
    """The trial did not complete; the worker and its model stay usable."""

    event: Literal["trial_failed"] = "trial_failed"
    state: Literal[TrialState.INFEASIBLE, TrialState.FAILED]
    error: str
    log: str
    traceback: str | None = None


class Refused(Frozen):
    """The worker could not read a request (``ProtocolError``); it exits after this."""

    event: Literal["refused"] = "refused"
    error: str


StartReply = Annotated[Hello | Ready | LoadFailed | Refused, Field(discriminator="event")]
WorkerReply = Annotated[Measured | TrialFailed | Refused, Field(discriminator="event")]
START_REPLY = TypeAdapter(StartReply)
REPLY = TypeAdapter(WorkerReply)


# ---- served-path worker: one job (process argument), one reply ----

class PromptsJob(Frozen):
    """Prompts of exactly ``prompt_tokens`` tokens, from the model's vocabulary only."""

    op: Literal["prompts"] = "prompts"
    model_path: str
    env: dict[str, str]
    prompt_tokens: int
    count: int


class ServedMeasureJob(Frozen):
    """``warmup`` + ``requests`` streamed completions on a config entry, loaded as
    llama_cpp.server loads it."""

    op: Literal["measure"] = "measure"
    entry: dict[str, Any]  # the server's model entry (tuner.deploy.prodconfig.model_entry)
    env: dict[str, str]
    warmup: int
    requests: int
    prompt_tokens: int
    gen_tokens: int


class BreakdownJob(Frozen):
    """Where a served token's time goes (tuner/results/breakdown.py): the config entry loaded
    as llama_cpp.server loads it, then ``warmup`` + ``repetitions`` interleaved rounds of every
    in-process stage, each generating ``gen_tokens`` at depth ``prompt_tokens``."""

    op: Literal["breakdown"] = "breakdown"
    entry: dict[str, Any]
    env: dict[str, str]
    warmup: int
    repetitions: int
    prompt_tokens: int
    gen_tokens: int


ServedJob = Annotated[PromptsJob | ServedMeasureJob | BreakdownJob, Field(discriminator="op")]
SERVED_JOB = TypeAdapter(ServedJob)


class Prompts(Frozen):
    event: Literal["prompts"] = "prompts"
    prompts: list[str]
    eog: list[int]  # end-of-generation tokens, biased away in every request
    lengths: list[int]  # tokens per prompt, BOS included
    max_prefix_reuse: int
    forced_prefix: int = 0  # tokens every prompt of the vocabulary starts with (BOS, ...)


class ServedRun(Frozen):
    """Times of one streamed completion after the call: first chunk, last chunk."""

    ttft_s: float
    request_s: float
    gen_s: float
    chunks: int
    finish_reason: str | None


class ServedRuns(Frozen):
    event: Literal["served"] = "served"
    runs: list[ServedRun]  # warm-up left out
    load_seconds: float
    max_prefix_reuse: int
    n_threads: int | None
    n_threads_batch: int | None
    lengths: list[int] = Field(default_factory=list)  # prompt tokens of the measured requests
    forced_prefix: int = 0


class BreakdownTimes(Frozen):
    """Per stage (raw, eval, sample, bias, completion) its ms per generated token, one per kept
    round; a stage that failed has its error instead."""

    event: Literal["breakdown"] = "breakdown"
    ms: dict[str, list[float]]
    errors: dict[str, str]
    sampling: dict[str, float]  # the server's default sampling settings, as read there
    n_threads: int | None


class ServedFailed(Frozen):
    event: Literal["served_failed"] = "served_failed"
    error: str
    traceback: str


ServedReply = Annotated[Prompts | ServedRuns | BreakdownTimes | ServedFailed | Refused,
                        Field(discriminator="event")]
SERVED_REPLY = TypeAdapter(ServedReply)


# ---- both sides ----

def send(conn: Conn, msg: Frozen) -> None:
    """Put one message on the pipe as a JSON-able dict."""
    conn.send(msg.model_dump(mode="json"))


def parse(adapter: TypeAdapter[T], raw: object) -> T:
    """``raw`` validated as one of ``adapter``'s messages, or a ``ProtocolError`` naming what
    is wrong (unknown kind, missing or extra field, wrong type)."""
    try:
        return adapter.validate_python(raw)
    except ValidationError as e:
        kind = raw.get("op", raw.get("event")) if isinstance(raw, dict) else type(raw).__name__
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'message'}: {err['msg']}"
                             for err in e.errors(include_url=False))
        raise ProtocolError(f"malformed worker message {kind!r}: {problems}") from None


M = TypeVar("M", bound=Frozen)


def expect_reply(answer: Frozen, kind: type[M], who: str) -> M:
    """``answer`` when it is a ``kind`` message, else a ``ProtocolError`` saying what ``who``
    answered instead (a valid reply of the wrong kind for the request)."""
    if not isinstance(answer, kind):
        wanted = kind.model_fields["event"].default
        raise ProtocolError(f"{who} answered {getattr(answer, 'event', None)!r}, not {wanted!r}")
    return answer


def receive(conn: Conn, adapter: TypeAdapter[T]) -> T:
    """The next message on the pipe, validated (see ``parse``). Raises EOFError when the other
    end is gone, as ``recv`` does."""
    return parse(adapter, conn.recv())
