"""Worker process entry. Started with the spawn method (a process forked after CUDA started
cannot use CUDA), it sets its environment before llama_cpp is first imported, loads the model
once, then serves measurement requests on its pipe until told to stop. llama.cpp's own output
goes to the worker's log file, never to the pipe."""

from __future__ import annotations

import os
import re
import socket
import sys
import time
import traceback
from contextlib import suppress
from typing import Any

from tuner.errors import TunerError
from tuner.machine.cpus import default_threads
from tuner.machine.interrupt import ignore_sigint_in_child
from tuner.results.readings import GpuClocks, TrialState
from tuner.settings import apply_host_patterns, apply_model, environment, host_patterns
from tuner.specs import ModelSettings
from tuner.worker.llamaparams import ffn_on_host_of
from tuner.worker.logcapture import LogCapture
from tuner.worker.opproof import OP_PROOF
from tuner.worker.protocol import (
    PROBE_REQUEST,
    REQUEST,
    WORKER_JOB,
    Conn,
    Hello,
    LoadFailed,
    Measure,
    Measured,
    ProtocolError,
    Ready,
    Refused,
    Stop,
    TrialFailed,
    WorkerJob,
    adoptable,
    parse,
    receive,
    send,
)


def prepare_environment(ms: ModelSettings, lib_dir: str | None) -> None:
    if lib_dir:
        os.environ["LLAMA_CPP_LIB_PATH"] = lib_dir
    else:
        os.environ.pop("LLAMA_CPP_LIB_PATH", None)
    os.environ.update(environment(ms))  # what the model-level settings ask (tuner/settings.py)
    # Only the proof context may print its schedule (tuner/worker/opproof.py), never a timed one.
    os.environ.pop("GGML_SCHED_DEBUG", None)
    if ms.device == "cpu":
        # A deliberate CPU run: hide the GPUs, or llama.cpp would still offload big matmuls.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    # CUDA's device numbers in NVML's (PCI bus) order: the GPU llama.cpp calls CUDA0 is the one
    # tuner/worker/gpumem.py reads clocks and memory from.
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")


def load_error(log: str) -> str:
    """Why llama.cpp refused the model, in its own words when its log says (e.g. "device CUDA0
    does not support split buffers" for a row split)."""
    said = re.search(r"error loading model: (.+)", log)
    return "llama.cpp could not load the model" + (f": {said.group(1).strip()}" if said else "")


def redirect_stdio(path: str) -> None:
    """Anything llama.cpp prints directly (not through the log callback) lands in a file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def worker_main(conn: Conn, raw_job: dict[str, Any]) -> None:
    ignore_sigint_in_child()  # Ctrl-C is the parent's; it kills workers
    try:
        job = parse(WORKER_JOB, raw_job)
    except ProtocolError as e:
        send(conn, Refused(error=str(e)))
        conn.close()
        return
    ms = job.model_settings
    prepare_environment(ms, job.lib_dir)
    redirect_stdio(job.log_path + ".stdio")
    try:
        _serve(conn, ms, job)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        conn.close()


def _serve(conn: Conn, ms: ModelSettings, job: WorkerJob) -> None:
    log = LogCapture(job.log_path)
    import llama_cpp  # noqa: PLC0415 - only after the environment is set

    log.install(llama_cpp)
    llama_cpp.llama_backend_init()
    system_info = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace")
    log.write(system_info.rstrip() + "\n")
    from tuner.worker.gpumem import GpuMonitor

    gpu = GpuMonitor(ms.main_gpu) if ms.device == "cuda" else None
    info: dict[str, Any] = {
        "pid": os.getpid(),
        "system_info": system_info,
        "supports_gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
        "llama_cpp_python": getattr(llama_cpp, "__version__", "unknown"),
        "lib_dir": os.environ.get("LLAMA_CPP_LIB_PATH"),
        "gpus": gpu.devices() if gpu else [],
        "driver": gpu.driver() if gpu else None,
        "hostname": socket.gethostname(),
    }
    if job.probe_only:
        # What the library said while loading its backends (ggml_cuda_init's device list
        # goes to stderr before the log callback exists): `tuner doctor` reads the devices.
        send(conn, Hello(**info, log=_read(job.log_path + ".stdio") + log.text()))
        adopted = _adopted(conn, ms, log)
        if adopted is None:
            return
        if ms.device == "cuda" and adopted.main_gpu != ms.main_gpu:
            gpu = GpuMonitor(adopted.main_gpu)
        ms = adopted

    try:
        model, load_seconds = _load(llama_cpp, job.model_path, ms)
    except (TunerError, ValueError) as e:  # the layer ffn_on_host needs: an unreadable header
        send(conn, LoadFailed(**info, error=f"ffn_on_host: {e}", log=log.text()))
        return
    if not model:
        send(conn, LoadFailed(**info, error=load_error(log.text()), log=log.text()))
        return
    send(conn, Ready(**info, load_seconds=load_seconds, log=log.text(),
                     n_layer=llama_cpp.llama_model_n_layer(model)))
    threads = default_threads()
    while True:
        try:
            req = receive(conn, REQUEST)
        except ProtocolError as e:
            send(conn, Refused(error=str(e)))
            break
        if isinstance(req, Stop):
            break
        send(conn, _measure(llama_cpp, model, req, threads, gpu, log))
    llama_cpp.llama_model_free(model)


def _load(llama_cpp: Any, model_path: str, ms: ModelSettings) -> tuple[Any, float]:
    """The model loaded with the model-level settings (NULL where llama.cpp refused it), and
    the seconds the load took. The tensors kept on the host (experts, a layer's FFN matrices)
    are one override list: the layer ffn_on_host names is read from the model's header."""
    mp = llama_cpp.llama_model_default_params()
    apply_model(llama_cpp, mp, ms)
    apply_host_patterns(llama_cpp, mp,
                        host_patterns(ms.n_cpu_moe, ffn_on_host_of(model_path, ms)))
    t0 = time.perf_counter()
    model = llama_cpp.llama_model_load_from_file(model_path.encode(), mp)
    return model, time.perf_counter() - t0


def _adopted(conn: Conn, ms: ModelSettings, log: LogCapture) -> ModelSettings | None:
    """After a probe's Hello: the model settings of the trial worker it becomes (its logs moved
    to the trial worker's files), or None (Stop, or a request it cannot take)."""
    try:
        req = receive(conn, PROBE_REQUEST)
    except ProtocolError as e:
        send(conn, Refused(error=str(e)))
        return None
    if isinstance(req, Stop):
        return None
    new = req.model_settings
    if not adoptable(ms, new):
        send(conn, Refused(error="adopt asks another build, device or environment than the "
                                 "probe started with"))
        return None
    old_stdio = log.path + ".stdio"
    with suppress(OSError), open(req.log_path + ".stdio", "a") as f:
        f.write(_read(old_stdio))
    redirect_stdio(req.log_path + ".stdio")
    log.move_to(req.log_path)
    return new


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _measure(lc: Any, model: Any, req: Measure, threads: int, gpu: Any,
             log: LogCapture) -> Measured | TrialFailed:
    """One trial on a new context; a trial that fails becomes a TrialFailed, and the worker
    and its model stay usable."""
    from tuner.worker.bench import Infeasible

    cs, wl = req.context, req.workload
    # Where every operation runs, from a separate context, before any clock or NVML sampling.
    op_proof = OP_PROOF.take(lc, model, cs, wl.n_ctx, threads, log)
    log.mark()
    if gpu:
        gpu.reset_peak()
    try:
        return _timed(lc, model, req, threads, gpu, log, op_proof)
    except Infeasible as e:
        return TrialFailed(state=TrialState.INFEASIBLE, error=str(e), log=log.since_mark())
    except Exception as e:  # the trial failed, the worker and its model stay usable
        return TrialFailed(state=TrialState.FAILED, error=f"{type(e).__name__}: {e}",
                           traceback=traceback.format_exc(), log=log.since_mark())


def _timed(lc: Any, model: Any, req: Measure, threads: int, gpu: Any, log: LogCapture,
           op_proof: tuple[str | None, str | None]) -> Measured:
    """The trial's context made, measured and freed. NVML is read only between the timed
    phases, and llama.cpp's per-token debug logging bypasses Python while the clock runs (see
    LogCapture.quiet)."""
    from tuner.worker.bench import Bench, Infeasible, context_params

    cs, wl = req.context, req.workload
    t0 = time.perf_counter()
    ctx = lc.llama_init_from_model(model, context_params(lc, cs, wl.n_ctx, threads))
    context_seconds = time.perf_counter() - t0
    if not ctx:
        raise Infeasible("llama.cpp could not create the context (out of memory, or settings "
                         "it refuses)")
    try:
        bench = Bench(lc, model, ctx)
        if gpu:
            gpu.note_memory()
        clocks_start = gpu.clocks() if gpu else None
        with log.quiet(lc):
            pp, tg, warmups, pruned = bench.timed(wl, cs.n_batch, req.prune_against)
        clocks_end = gpu.clocks() if gpu else None
        if gpu:
            gpu.note_memory()
        clocks = (GpuClocks.model_validate({"start": clocks_start, "end": clocks_end})
                  if clocks_start is not None and clocks_end is not None else None)
        return Measured(context_seconds=context_seconds, pp_seconds=pp, tg_seconds=tg,
                        warmups=warmups, threads=cs.n_threads or threads,
                        gpu_peak_mib=gpu.peak_mib() if gpu else None,
                        gpu_total_mib=gpu.total_mib if gpu else None, clocks=clocks,
                        log=log.since_mark(), op_log=op_proof[0], op_error=op_proof[1],
                        pruned=pruned)
    finally:
        lc.llama_free(ctx)
