"""The worker protocol (tuner/worker/protocol.py): every message survives the pipe as itself;
an unknown kind, a missing field, an extra field or a message of the other direction is refused
with a ProtocolError that names it; a real worker refuses a malformed job or request the same
way; an Outcome exists for each trial state and carries it into the record unchanged."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from tests.cli_run import REPO
from tuner.builds.buildinfo import BuildFlags
from tuner.results.readings import ClockReading, GpuClocks, TrialState
from tuner.results.records import Environment
from tuner.specs import ContextSettings, ModelSettings, TrialSpec, Workload
from tuner.worker.outcome import Outcome
from tuner.worker.protocol import (
    PROBE_REQUEST,
    REPLY,
    REQUEST,
    SERVED_JOB,
    SERVED_REPLY,
    START_REPLY,
    WORKER_JOB,
    Adopt,
    GpuDevice,
    Hello,
    LoadFailed,
    Measure,
    Measured,
    Prompts,
    PromptsJob,
    ProtocolError,
    Ready,
    Refused,
    ServedFailed,
    ServedMeasureJob,
    ServedRun,
    ServedRuns,
    Stop,
    TrialFailed,
    WorkerJob,
    expect_reply,
    parse,
    receive,
    send,
)
from tuner.worker.runner import Runner
from tuner.worker.trialrecord import make_record

CPU = ModelSettings(device="cpu", build="installed")
CTX = ContextSettings(n_batch=32, n_ubatch=16, n_threads=1, flash_attn=True, type_v="q8_0")
WL = Workload(prompt_tokens=16, gen_tokens=2, repetitions=1, warmup=0)
INFO = dict(pid=7, system_info="CPU : SSE3 = 1 | ", supports_gpu_offload=False,
            llama_cpp_python="0.3.36", lib_dir=None,
            gpus=[GpuDevice(index=0, name="NVIDIA H100 80GB HBM3", memory_mib=81559.0)],
            driver="550.54", hostname="h", log="llama_model_loader: ...")
CLOCKS = GpuClocks(start=ClockReading(sm_clock_mhz=1980, throttle_reasons=[]),
                   end=ClockReading(sm_clock_mhz=1755, power_w=699.5,
                                    throttle_reasons=["sw_power_cap"]))
MEASURED = Measured(context_seconds=0.01, pp_seconds=[0.5, 0.25], tg_seconds=[0.125, 0.0625],
                    warmups={"pp": 2, "tg": 1}, threads=4, gpu_peak_mib=1024.5,
                    gpu_total_mib=81559.0, clocks=CLOCKS, log="llama_context: n_ctx = 256\n",
                    op_log="## SPLIT #0: CUDA0 # 3 inputs", op_error=None)
PRUNE_WHY = "pruned after 2 repetition(s): each took at least 0.25 s"
PRUNED = MEASURED.model_copy(update={"tg_seconds": [], "pruned": PRUNE_WHY})

# (adapter of the receiving side, message): every message of both directions.
MESSAGES = [
    (WORKER_JOB, WorkerJob(model_path="/m.gguf", model_settings=CPU, lib_dir="/builds/x/lib",
                           log_path="/tmp/w.log", probe_only=True)),
    (REQUEST, Measure(context=CTX, workload=WL)),
    (REQUEST, Measure(context=CTX, workload=WL, prune_against=[0.5, 0.25])),
    (REQUEST, Stop()),
    (PROBE_REQUEST, Adopt(model_settings=CPU, log_path="/results/s/logs/worker-1.log")),
    (PROBE_REQUEST, Stop()),
    (START_REPLY, Hello(**INFO)),
    (START_REPLY, Ready(**INFO, load_seconds=1.5, n_layer=30)),
    (START_REPLY, LoadFailed(**INFO, error="llama.cpp could not load the model")),
    (START_REPLY, Refused(error="malformed worker message")),
    (REPLY, MEASURED),
    (REPLY, MEASURED.model_copy(update={"clocks": None, "gpu_peak_mib": None})),
    (REPLY, TrialFailed(state=TrialState.INFEASIBLE, error="no KV slot", log="x\n")),
    (REPLY, TrialFailed(state=TrialState.FAILED, error="RuntimeError: boom", log="",
                        traceback="Traceback ...")),
    (SERVED_JOB, PromptsJob(model_path="/m.gguf", env={"A": "1"}, prompt_tokens=40, count=6)),
    (SERVED_JOB, ServedMeasureJob(entry={"model": "/m.gguf", "n_ctx": 256}, env={}, warmup=1,
                                  requests=3, prompt_tokens=40, gen_tokens=8)),
    (SERVED_REPLY, Prompts(prompts=["Alpha x", "Bravo x"], eog=[2], lengths=[40, 40],
                           max_prefix_reuse=1)),
    (SERVED_REPLY, ServedRuns(runs=[ServedRun(ttft_s=0.1, request_s=0.5, gen_s=0.4, chunks=8,
                                              finish_reason="length")],
                              load_seconds=0.3, max_prefix_reuse=1, n_threads=4,
                              n_threads_batch=None)),
    (SERVED_REPLY, ServedFailed(error="RuntimeError: x", traceback="Traceback ...")),
]


@pytest.mark.parametrize("adapter,msg", MESSAGES, ids=lambda x: type(x).__name__)
def test_every_message_crosses_a_real_pipe_unchanged(adapter: TypeAdapter, msg: object) -> None:
    parent, child = mp.Pipe()
    send(child, msg)  # type: ignore[arg-type]
    got = receive(parent, adapter)
    assert got == msg and type(got) is type(msg)
    assert isinstance(_plain(msg.model_dump(mode="json")), dict)  # type: ignore[attr-defined]


def _plain(x: object) -> object:
    """Fails unless ``x`` is made of JSON types only (what goes on the wire)."""
    if isinstance(x, dict):
        assert all(isinstance(k, str) for k in x)
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    assert x is None or type(x) in (str, int, float, bool), type(x)
    return x


def test_an_unknown_kind_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ProtocolError, match="'warm_up'.*does not match any of the expected "
                                            "tags: 'measure', 'stop'"):
        parse(REQUEST, {"op": "warm_up"})
    with pytest.raises(ProtocolError, match="malformed worker message 'ok'"):
        parse(REPLY, {"event": "ok", "pp_seconds": [1.0]})
    with pytest.raises(ProtocolError, match="message: Unable to extract tag"):
        parse(REPLY, {"ok": True})  # the old untyped answer
    with pytest.raises(ProtocolError, match="malformed worker message 'str'"):
        parse(REQUEST, "stop")


def test_a_missing_field_is_refused_naming_it() -> None:
    raw = MEASURED.model_dump(mode="json")
    del raw["op_log"]
    with pytest.raises(ProtocolError, match=r"measured\.op_log: Field required"):
        parse(REPLY, raw)
    with pytest.raises(ProtocolError, match=r"measure\.workload: Field required"):
        parse(REQUEST, {"op": "measure", "context": CTX.model_dump(mode="json")})
    job = MESSAGES[0][1].model_dump(mode="json")  # type: ignore[attr-defined]
    del job["log_path"]
    with pytest.raises(ProtocolError, match="log_path: Field required"):
        parse(WORKER_JOB, job)


def test_an_extra_field_or_a_wrong_type_is_refused() -> None:
    # served.py's worker once read lib_dir and cpu_only that the parent never sent: now a
    # field is either in the model (and filled) or refused.
    raw = PromptsJob(model_path="/m", env={}, prompt_tokens=4, count=1).model_dump(mode="json")
    with pytest.raises(ProtocolError, match=r"prompts\.lib_dir: Extra inputs are not permitted"):
        parse(SERVED_JOB, {**raw, "lib_dir": "/x"})
    with pytest.raises(ProtocolError, match=r"measure\.workload\.prompt_tokens"):
        parse(REQUEST, {"op": "measure", "context": CTX.model_dump(mode="json"),
                        "workload": {**WL.model_dump(mode="json"), "prompt_tokens": "many"}})
    # A worker reports only the states a worker can know; the parent decides the others.
    bad = TrialFailed(state=TrialState.FAILED, error="e", log="").model_dump(mode="json")
    with pytest.raises(ProtocolError, match=r"trial_failed\.state"):
        parse(REPLY, {**bad, "state": "crashed"})


def test_a_message_of_the_other_direction_is_refused() -> None:
    with pytest.raises(ProtocolError, match="'measure'"):
        parse(REPLY, Measure(context=CTX, workload=WL).model_dump(mode="json"))
    with pytest.raises(ProtocolError, match="'ready'"):
        parse(REPLY, Ready(**INFO, load_seconds=1.0, n_layer=2).model_dump(mode="json"))
    with pytest.raises(ProtocolError, match="'measured'"):
        parse(START_REPLY, MEASURED.model_dump(mode="json"))


def test_messages_are_frozen() -> None:
    with pytest.raises(ValidationError):
        MEASURED.threads = 2  # type: ignore[misc]


def test_a_real_worker_refuses_a_malformed_job(tmp_path: Path) -> None:
    from tuner.worker.main import worker_main
    from tuner.worker.runner import SPAWN

    parent, child = SPAWN.Pipe()
    job = {"model_path": str(tmp_path / "m.gguf"), "model_settings": CPU.model_dump(),
           "lib_dir": None}  # no log_path
    proc = SPAWN.Process(target=worker_main, args=(child, job), daemon=True)
    proc.start()
    child.close()
    try:
        assert parent.poll(120)
        answer = receive(parent, START_REPLY)
    finally:
        proc.join(30)
    assert isinstance(answer, Refused) and "log_path: Field required" in answer.error
    assert proc.exitcode == 0


def test_a_live_worker_refuses_a_malformed_request(tiny_model: Path, tmp_path: Path) -> None:
    with Runner(tiny_model, tmp_path, {"installed": None}) as runner:
        out = runner.run(TrialSpec(model=CPU, context=ContextSettings(n_batch=16, n_ubatch=16,
                                                                      n_threads=1)), WL)
        assert out.state is TrialState.COMPLETE, out.error
        w = runner._worker
        assert w is not None
        w.conn.send({"op": "measure", "workload": WL.model_dump(mode="json")})
        with pytest.raises(ProtocolError, match=r"refused the request: .*measure\.context: "
                                                "Field required"):
            w.call(None, REPLY, 60)
        w.proc.join(30)
        assert w.proc.exitcode == 0, "the worker ended cleanly after refusing"
        runner._worker = None


def _env(tmp: Path) -> Environment:
    return Environment(hostname="h", platform="p", python="3", cpu="c", cpu_count=2,
                       llama_cpp_python="0.3.36", tuner="0", model_path=str(tmp),
                       model_bytes=1, model_sha256="0" * 64)


OUTCOMES = {
    TrialState.COMPLETE: Outcome(state=TrialState.COMPLETE, reply=MEASURED,
                                 hello=Ready(**INFO, load_seconds=1.5, n_layer=2),
                                 worker_id="h:7"),
    TrialState.INFEASIBLE: Outcome(state=TrialState.INFEASIBLE, reply=TrialFailed(
        state=TrialState.INFEASIBLE, error="no KV slot", log="a\nb\n"), error="no KV slot",
        log_tail=["a", "b"], worker_id="h:7"),
    TrialState.PRUNED: Outcome(state=TrialState.PRUNED, reply=PRUNED, error=PRUNE_WHY,
                               hello=Ready(**INFO, load_seconds=1.5, n_layer=2),
                               worker_id="h:7"),
    TrialState.CRASHED: Outcome(state=TrialState.CRASHED, error="worker killed by SIGSEGV "
                                "during the trial", signal="SIGSEGV", log_tail=["ggml_abort"]),
    TrialState.TIMEOUT: Outcome(state=TrialState.TIMEOUT, error="trial ran over 5s; worker "
                                "killed", log_tail=["decode"]),
    TrialState.FAILED: Outcome(state=TrialState.FAILED, reply=TrialFailed(
        state=TrialState.FAILED, error="RuntimeError: x", log="", traceback="T"),
        error="RuntimeError: x"),
}


@pytest.mark.parametrize("state", list(TrialState))
def test_an_outcome_for_each_state_becomes_a_record_of_that_state(state: TrialState,
                                                                  tmp_path: Path) -> None:
    out = OUTCOMES[state]
    spec = TrialSpec(model=CPU, context=CTX)
    record = make_record("s", 3, spec, WL, out, BuildFlags(cuda=False), None, _env(tmp_path))
    assert record.state is state
    assert (record.error, record.signal, record.log_tail) == (out.error, out.signal,
                                                             out.log_tail)
    measured = state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert (out.measured is not None) == measured
    if not measured:
        assert record.measurement is None and not record.verification.verified
        assert record.verification.reasons == [out.error]
    if state is TrialState.PRUNED:  # its partial figures: the prompt seconds, lower bounds
        m = record.measurement
        assert m is not None and m.tg_seconds is None and m.tg_tps is None
        assert m.request_seconds.samples == [0.5, 0.25] and record.objective == 0.375
        assert not record.usable


def test_an_outcome_is_complete_exactly_when_measured() -> None:
    with pytest.raises(ValidationError, match="complete or pruned exactly when the worker "
                                              "measured it"):
        Outcome(state=TrialState.COMPLETE)
    with pytest.raises(ValidationError, match="complete or pruned exactly when"):
        Outcome(state=TrialState.FAILED, reply=MEASURED)
    with pytest.raises(ValidationError, match="state"):
        Outcome(state="ok", reply=MEASURED)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="pruned exactly when the worker pruned it"):
        Outcome(state=TrialState.PRUNED, reply=MEASURED)
    with pytest.raises(ValidationError, match="pruned exactly when"):
        Outcome(state=TrialState.COMPLETE, reply=PRUNED)


def test_the_protocol_imports_neither_llama_cpp_nor_the_runner() -> None:
    code = ("import sys, tuner.worker.protocol, tuner.worker.outcome, tuner.worker.trialrecord; "
            "print('llama_cpp' in sys.modules, 'tuner.worker.runner' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]



def test_the_environment_is_made_from_the_hello_model(tmp_path: Path) -> None:
    from tuner.sweep.environment import environment

    model = tmp_path / "m.gguf"
    from tuner.results.claims import host

    a = environment(Hello(**INFO), "installed", model, 1, "0" * 64)
    # The host is named as its claims name it (TUNER_HOST, else the hostname), not by the
    # worker: hosts sharing a study must be told apart the same way in both.
    assert (a.hostname, a.driver, a.system_info) == (host(), "550.54", "CPU : SSE3 = 1 |")
    assert a.gpus == [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559.0}]


def test_a_valid_reply_of_the_wrong_kind_is_a_protocol_error() -> None:
    """A loading worker that answers 'hello' (a probe's answer) instead of 'ready'."""
    hello = Hello(**INFO)
    assert expect_reply(hello, Hello, "a probe") is hello
    with pytest.raises(ProtocolError, match="a loading worker answered 'hello', not 'ready'"):
        expect_reply(hello, Ready, "a loading worker")
