"""FAKE failures for fault-injection tests: a way to make a real worker abort, segfault, hang,
exit, kill itself or die the way llama.cpp dies on a CUDA out-of-memory, on machines where the
real cause cannot be produced (no GPU in CI). Nothing here runs unless ``TUNER_FAULTS`` is set.

``TUNER_FAULTS`` holds ``KIND@STAGE[:FIELD=VALUE]`` items separated by commas, for example
``segfault@measure:n_batch=64`` or ``oom@load:n_gpu_layers=12``. Stages: ``load`` (model load;
FIELD=VALUE is matched against the model settings) and ``measure`` (a trial; FIELD=VALUE is
matched against the trial's context settings)."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from typing import Any

from tuner.machine import envvars
from tuner.machine.envvars import FAULT_KINDS

KINDS = FAULT_KINDS


def maybe_inject(stage: str, settings: dict[str, Any] | None = None, log: Any = None) -> None:
    for kind, where, cond in envvars.current().faults:
        if where != stage:
            continue
        if cond:
            field, _, value = cond.partition("=")
            if settings is None or str(settings.get(field)).lower() != value.lower():
                continue
        _fail(kind, log)


def _fail(kind: str, log: Any) -> None:
    if kind == "abort":
        os.abort()
    if kind == "segfault":
        ctypes.string_at(0)  # reads address 0: a real SIGSEGV
    if kind == "hang":
        while True:
            time.sleep(3600)
    if kind == "exit":
        os._exit(7)
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "oom":
        # What a CUDA build prints before ggml_abort when cudaMalloc fails during a decode.
        if log is not None:
            log.write("ggml_backend_cuda_buffer_type_alloc_buffer: allocating 81920.00 MiB on "
                      "device 0: cudaMalloc failed: out of memory\n")
            log.write("CUDA error: out of memory\n")
        os.abort()
    if kind == "amx":
        # What a native CPU build prints on an Intel Xeon with AMX before its first batched decode
        # crashes (llama.cpp issue 20824): the CPU weights in the AMX buffer, then SIGSEGV.
        if log is not None:
            log.write("load_tensors:          AMX model buffer size =    95.34 MiB\n")
        ctypes.string_at(0)
    if kind == "raise":
        raise RuntimeError("injected failure")
