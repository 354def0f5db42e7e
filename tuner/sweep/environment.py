"""The machine a trial ran on, attached to every record (pyperf-style metadata): GPU, driver,
llama-cpp-python version, the library build and its flags, the model's size and hash."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from contextlib import suppress
from pathlib import Path
from typing import Any

import tuner
from tuner.errors import BadInput
from tuner.machine.output import write_file
from tuner.results.claims import host
from tuner.results.records import Environment
from tuner.worker.protocol import WorkerInfo


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def model_sha256(path: Path, cache_dir: Path) -> str:
    """SHA-256 of the model file, cached by path, size and mtime (a 5 GB file takes seconds)."""
    st = Path(path).stat()
    key = f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"
    cache = Path(cache_dir) / ".model-hashes.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    known[key] = h.hexdigest()
    with suppress(OSError, BadInput):  # a cache: not kept when it cannot be written
        write_file(cache, json.dumps(known).encode(), "the model hash cache")
    return known[key]


def environment(info: WorkerInfo, build_name: str, model_path: Path,
                model_bytes: int, sha: str) -> Environment:
    """From what a worker reported about its library and devices (its ``Hello``), plus this
    host."""
    return Environment(
        hostname=host(),  # TUNER_HOST, else the hostname: the name this host's claims carry
        platform=platform.platform(),
        python=platform.python_version(),
        cpu=cpu_name(),
        cpu_count=os.cpu_count() or 1,
        llama_cpp_python=info.llama_cpp_python,
        tuner=tuner.__version__,
        gpus=[g.model_dump() for g in info.gpus],
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        driver=info.driver,
        build_name=build_name,
        build_lib_dir=info.lib_dir,
        system_info=info.system_info.strip() or None,
        model_path=str(Path(model_path).resolve()),
        model_bytes=model_bytes,
        model_sha256=sha,
    )


def gpu_in_use(env: Environment) -> str | None:
    """The GPU a sweep's workers run on, with its driver (``NVIDIA H100 80GB HBM3, driver
    580.159.04``), from a stored environment. None without an NVIDIA driver."""
    return gpu_label(env.gpus, env.driver, env.cuda_visible_devices)


def gpu_of(info: WorkerInfo) -> str | None:
    """``gpu_in_use`` from a worker's hello, before any environment is stored."""
    return gpu_label([g.model_dump() for g in info.gpus], info.driver,
                     os.environ.get("CUDA_VISIBLE_DEVICES"))


def gpu_label(gpus: list[dict[str, Any]], driver: str | None, visible: str | None) -> str | None:
    """The first of ``CUDA_VISIBLE_DEVICES`` when it names an index, else GPU 0."""
    if not gpus:
        return None
    first = (visible or "").split(",")[0].strip()
    pick = next((g for g in gpus if first.isdigit() and g.get("index") == int(first)), gpus[0])
    return f"{pick.get('name')}, driver {driver}"
