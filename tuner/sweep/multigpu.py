"""`tuner sweep --gpus 0,1,...`: one sweep process per GPU, all on one study.

Each child is the same `tuner sweep` command without ``--gpus``, started with
``CUDA_VISIBLE_DEVICES`` set to its one GPU (and ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so a CUDA
index means the same device as NVML's, which the workers read clocks and memory from). The
children share the study through its storage exactly as sweeps started by hand do (the claims
of tuner/results/claims.py: no setting runs twice, a dead child's trial is retried, the last child to
end decides the finalists and writes the config); this process only starts them, prefixes
their output with their GPU, forwards Ctrl-C / SIGTERM, and returns the first failing child's
exit code (0 when every child succeeded).

A split across GPUs (``split_modes`` in a space file) needs every GPU in one process: run
that sweep without ``--gpus``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from typing import TextIO

from tuner.errors import BadInput
from tuner.machine.children import popen_kwargs

_GPU_ID = re.compile(r"^(\d+|GPU-[0-9A-Fa-f-]+)$")  # a CUDA index or a GPU UUID


def parse_gpus(text: str) -> list[str]:
    """``0,1`` or UUIDs (``GPU-...``): each GPU once."""
    ids = [x.strip() for x in text.split(",")]
    if not ids or any(not x for x in ids):
        raise BadInput(f"--gpus {text!r}: give GPU indices separated by commas, e.g. 0,1")
    bad = [x for x in ids if not _GPU_ID.match(x)]
    if bad:
        raise BadInput(f"--gpus {text!r}: {bad[0]!r} is neither a GPU index nor a GPU UUID",
                       hint="nvidia-smi -L lists the GPUs with their indices and UUIDs")
    if len(set(ids)) != len(ids):
        raise BadInput(f"--gpus {text!r} names a GPU twice")
    return ids


def gpu_env(gpu: str) -> dict[str, str]:
    """What a sweep bound to one GPU runs with."""
    return {"CUDA_VISIBLE_DEVICES": gpu, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def without_gpus(args: list[str]) -> list[str]:
    """The command's arguments with ``--gpus X`` / ``--gpus=X`` removed."""
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a == "--gpus":
            skip = True
        elif not a.startswith("--gpus="):
            out.append(a)
    return out


def _pump(stream: TextIO, prefix: str, sink: TextIO, lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            sink.write(prefix + line)
            sink.flush()


def run_per_gpu(args: list[str], gpus: list[str]) -> int:
    """Run ``tuner <args>`` once per GPU, in parallel; the first failing child's exit code."""
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    width = max(len(g) for g in gpus)
    for g in gpus:
        p = subprocess.Popen([sys.executable, "-m", "tuner", *args],
                             env={**os.environ, **gpu_env(g)}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, bufsize=1,
                             **popen_kwargs(signal.SIGTERM))  # hands back its trial
        procs.append(p)
        assert p.stdout is not None
        t = threading.Thread(target=_pump, args=(p.stdout, f"gpu {g:<{width}} | ", sys.stdout,
                                                 lock), daemon=True)
        t.start()
        pumps.append(t)

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)  # each child hands back its trial and exits

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [p.wait() for p in procs]
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    for t in pumps:
        t.join(timeout=5)
    return next((c if c > 0 else 128 - c for c in codes if c != 0), 0)
