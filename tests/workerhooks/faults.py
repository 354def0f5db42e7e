"""FAKE failures for the fault-injection tests (no GPU in CI to make the real ones): a real
worker made to abort, segfault, hang, exit, kill itself, die the way llama.cpp dies on a CUDA
out-of-memory (at load, or in a decode with its backtrace) or in the AMX backend, or raise. Installed in a worker by tests/workerhooks.

``TUNER_TEST_FAULTS`` holds ``KIND@STAGE[:FIELD=VALUE]`` items separated by commas, for
example ``segfault@measure:n_batch=64`` or ``oom@load``. Stages: ``load`` (before the model
load, tuner/worker/main.py's ``_load``; FIELD=VALUE matched against the model settings) and
``measure`` (a trial, its ``_timed``, inside the trial's failure handling; FIELD=VALUE matched
against the trial's context settings)."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from tests import workerhooks

VAR = "TUNER_TEST_FAULTS"
KINDS = ("abort", "segfault", "hang", "exit", "sigkill", "oom", "oom-decode", "cublas-alloc", "amx",
         "raise")
STAGES = ("load", "measure")


@dataclass(frozen=True)
class Fault:
    kind: str
    stage: str
    field: str = ""  # "" fires on every setting
    value: str = ""

    def fires(self, stage: str, settings: dict[str, Any]) -> bool:
        return stage == self.stage and (
            not self.field or str(settings.get(self.field)).lower() == self.value.lower())


def parse(text: str) -> list[Fault]:
    """The faults of ``text``; ValueError names an item that is not KIND@STAGE[:FIELD=VALUE]."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        kind, _, rest = item.partition("@")
        stage, _, cond = rest.partition(":")
        field, eq, value = cond.partition("=")
        if kind not in KINDS or stage not in STAGES or (cond and not eq):
            raise ValueError(f"{VAR}: {item!r} is not KIND@STAGE[:FIELD=VALUE] (kinds: "
                             f"{', '.join(KINDS)}; stages: {', '.join(STAGES)})")
        out.append(Fault(kind, stage, field, value))
    return out


def env(text: str) -> dict[str, str]:
    """The environment additions that make a command's workers fail as ``text`` says (checked
    here, so that a mistyped fault fails the test rather than a worker's startup)."""
    parse(text)
    return workerhooks.env(**{VAR: text})


_logs: list[Any] = []  # the worker's log capture, once made: where the faults' last words go


def patch(main: ModuleType) -> None:
    """Fire the faults at the start of ``main._load`` and ``main._timed``; keep the worker's
    LogCapture for the faults that write llama.cpp's last words."""
    faults = parse(os.environ.get(VAR, ""))
    load, timed, capture = main._load, main._timed, main.LogCapture

    class RecordedCapture(capture):  # type: ignore[misc, valid-type]
        def __init__(self, path: str) -> None:
            super().__init__(path)
            _logs.append(self)

    def faulty_load(llama_cpp: Any, model_path: str, ms: Any) -> Any:
        fire(faults, "load", ms.model_dump())
        return load(llama_cpp, model_path, ms)

    def faulty_timed(lc: Any, model: Any, req: Any, *rest: Any) -> Any:
        fire(faults, "measure", req.context.model_dump())
        return timed(lc, model, req, *rest)

    main._load, main._timed, main.LogCapture = faulty_load, faulty_timed, RecordedCapture


def fire(faults: list[Fault], stage: str, settings: dict[str, Any]) -> None:
    for fault in faults:
        if fault.fires(stage, settings):
            _fail(fault.kind, _logs[-1] if _logs else None)


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
    if kind == "oom-decode":
        # What a CUDA build writes to stderr when a decode's allocation fails inside the timed
        # region (where llama.cpp's own C logger writes, not the worker's callback):
        # ggml_cuda_error's lines, ggml_abort's message, then the backtrace ggml prints (here
        # glibc's backtrace_symbols_fd form, 40 frames) before abort().
        lines = ["CUDA error: out of memory",
                 "  current device: 0, in function ggml_cuda_pool_vmm::alloc at "
                 "ggml/src/ggml-cuda/ggml-cuda.cu:423",
                 "  cuMemCreate(&handle, reserve_size, &prop, 0)",
                 "/tmp/llama.cpp/ggml/src/ggml-cuda/ggml-cuda.cu:88: CUDA error"]
        lines += [f"/tmp/site/llama_cpp/lib/libggml-base.so(+0x{0x1a2b0 + 16 * i:x}) "
                  f"[0x7f3c2e5{0xa4a4b + 16 * i:x}]" for i in range(40)]
        os.write(2, ("\n".join(lines) + "\n").encode())
        os.abort()
    if kind == "cublas-alloc":
        # What run 35's trial #7 wrote (H200, a 14B at 40 layers, no flash attention, 8 GiB left):
        # cuBLAS could not allocate its handle in the first decode, then ggml_abort.
        lines = ["CUDA error: the resource allocation failed",
                 "  current device: 0, in function cublas_handle at /tmp/pip-req-build-laxsy2ob/"
                 "vendor/llama.cpp/ggml/src/ggml-cuda/../ggml-cuda/common.cuh:1534",
                 "  cublasCreate_v2(&cublas_handles[device][curr_stream_no])",
                 "/tmp/pip-req-build-laxsy2ob/vendor/llama.cpp/ggml/src/ggml-cuda/ggml-cuda.cu:109: "
                 "CUDA error"]
        os.write(2, ("\n".join(lines) + "\n").encode())
        os.abort()
    if kind == "amx":
        # What a native CPU build prints on an Intel Xeon with AMX before its first batched decode
        # crashes (llama.cpp issue 20824): the CPU weights in the AMX buffer, then SIGSEGV.
        if log is not None:
            log.write("load_tensors:          AMX model buffer size =    95.34 MiB\n")
        ctypes.string_at(0)
    if kind == "raise":
        raise RuntimeError("injected failure")
