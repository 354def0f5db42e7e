"""Served figures of one config: through the code path llama_cpp.server runs, in a fresh
spawned worker (``via="worker"``), or through a real server over HTTP (``via="server"``)."""

from __future__ import annotations

import os

from tuner.deploy.httpserve import serve_and_measure
from tuner.deploy.prodconfig import model_entry
from tuner.deploy.served import check_placement, figures, run_child
from tuner.deploy.service import service_env
from tuner.errors import TunerError
from tuner.machine.cpus import default_threads
from tuner.results.records import ServedFigures
from tuner.specs import TrialSpec, Workload
from tuner.worker.protocol import ServedMeasureJob, ServedRuns, expect_reply


def measure_served(model_path: str | os.PathLike[str], spec: TrialSpec, workload: Workload,
                   lib_dir: str | None, requests: int = 5, threads: int | None = None,
                   timeout_s: float = 900, via: str = "worker") -> ServedFigures:
    """Time ``requests`` streamed completions of ``workload`` (after one warm-up) on ``spec``'s
    settings, loaded as llama_cpp.server loads the production config, in a fresh process.

    ``threads`` sets n_threads and n_threads_batch of the served config (default: the trial's
    own, else every core): with every layer on the GPU they compete with the per-token Python
    work, so a sweep of served figures over ``threads`` can pick the server's setting.

    ``via="server"`` times the same requests through a real ``llama_cpp.server`` over HTTP
    instead (a fresh server process, the client in this one): what ``tuner verify`` measures,
    event loop and per-chunk thread hand-offs included. On a machine whose cores the
    llama.cpp threads fill, that path is markedly slower than the in-process one."""
    if requests < 1:
        raise TunerError("measure_served needs at least one request")
    threads = threads or spec.context.n_threads or default_threads()
    entry = model_entry(spec, workload, str(model_path), threads)
    env = service_env(spec, lib_dir, model_path)
    if via == "server":
        served, log = serve_and_measure(entry, env, workload, requests, timeout_s)
        check_placement(log, spec)
        return served.model_copy(update={"n_threads": threads, "n_threads_batch": threads})
    if via != "worker":
        raise TunerError(f"via must be 'worker' or 'server', not {via!r}")
    answer, log = run_child(ServedMeasureJob(entry=entry, env=env, warmup=1, requests=requests,
                                             prompt_tokens=workload.prompt_tokens,
                                             gen_tokens=workload.gen_tokens), timeout_s)
    runs = expect_reply(answer, ServedRuns, "a served measure job")
    check_placement(log, spec)
    return figures([r.model_dump() for r in runs.runs], source="worker",
                   prompt_tokens=workload.prompt_tokens, gen_tokens=workload.gen_tokens,
                   warmup=1, max_prefix_reuse=runs.max_prefix_reuse,
                   n_threads=runs.n_threads, n_threads_batch=runs.n_threads_batch,
                   lengths=runs.lengths, forced_prefix=runs.forced_prefix)
