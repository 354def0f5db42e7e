"""Every environment variable the tuner itself reads, declared once, parsed into one typed
value and checked at the start of every command (tuner/cli.py): a bad value is one line, exit
2, before any work, never a traceback in a thread or a busy loop. The code that uses a value
reads it from ``current()``, never from ``os.environ``.

- ``TUNER_HEARTBEAT_S`` (5): seconds between a sweep's claim heartbeats.
- ``TUNER_STALE_S`` (60): seconds of silence after which a claim's owner counts as gone; more
  than the heartbeat, or every live sweep would look gone to the others and settings would run
  twice.
- ``TUNER_HOST`` (the hostname): the name this host's claims carry.
- ``TUNER_N_CPU_MOE`` (0): the first layers whose mixture-of-experts weights a service keeps in
  host memory (the setting ``n_cpu_moe``; its deployment's environment file sets it, and
  ``python -m tuner.deploy.serverlaunch`` runs llama_cpp.server with it).
- ``TUNER_FFN_ON_HOST`` (unset): ``<layer>:<matrices>``, e.g. ``14:gate+down``: one layer's FFN
  matrices a service keeps in host memory (the setting ``ffn_on_host`` resolved against the
  model's layers when the deployment was written; read by the same launcher).
- ``TUNER_FAKE_GPU_FREE_MIB``, ``TUNER_FAKE_HOST_AVAILABLE_MIB`` (unset): FAKE free GPU and
  host memory in MiB for the memory plan's tests on machines without a GPU (CI); never set on
  a real run.

Variables read for other programs (CUDA_VISIBLE_DEVICES, LLAMA_CPP_LIB_PATH...) are theirs."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tuner.errors import BadInput
from tuner.settings import FFN_ON_HOST, FfnOnHost

MAX_SECONDS = 604800.0  # a week
HOST_MAX = 255  # the claims table's host column


@dataclass(frozen=True)
class TunerEnv:
    heartbeat_s: float
    stale_s: float
    host: str | None  # None: the hostname
    n_cpu_moe: int = 0  # a service's layers with their experts on the host
    ffn_on_host: FfnOnHost | None = None  # a service's layer with FFN matrices on the host
    fake_gpu_free_mib: float | None = None  # FAKE (tests): the GPU's free memory
    fake_host_available_mib: float | None = None  # FAKE (tests): the host's available memory


def _number(text: str) -> float:
    """``text`` as a float; NaN (refused by every caller's range check) when it is none."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _seconds(name: str, text: str) -> float:
    value = _number(text)
    if not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
        raise BadInput(f"{name}={text!r} is not a number of seconds above 0 and at most "
                       f"{MAX_SECONDS:.0f}", hint=f"unset {name} or give e.g. {name}=5")
    return value


def _host(name: str, text: str) -> str | None:
    if text == "":
        return None
    if len(text) > HOST_MAX or not text.isprintable() or text.strip() != text:
        raise BadInput(f"{name}={text[:40]!r} is not a host name (printable, no surrounding "
                       f"spaces, at most {HOST_MAX} characters)", hint=f"unset {name}")
    return text


def _mib(name: str, text: str) -> float | None:
    if text == "":
        return None
    value = _number(text)
    if not (math.isfinite(value) and value >= 0):
        raise BadInput(f"{name}={text!r} is not a number of MiB, 0 or above",
                       hint=f"unset {name}: it is a FAKE for tests")
    return value


MAX_LAYERS = 65536  # more layers than any model has


def _count(name: str, text: str) -> int:
    t = text.strip()
    if t == "":
        return 0
    if t.isascii() and t.isdigit() and int(t) <= MAX_LAYERS:
        return int(t)
    raise BadInput(f"{name}={text[:40]!r} is not a count of layers from 0 to {MAX_LAYERS}",
                   hint=f"unset {name} or give e.g. {name}=4")


def _ffn_part(name: str, text: str) -> FfnOnHost | None:
    t = text.strip()
    if t == "":
        return None
    layer, _, part = t.partition(":")
    if layer.isascii() and layer.isdigit() and int(layer) <= MAX_LAYERS and part in FFN_ON_HOST:
        return FfnOnHost(layer=int(layer), part=part)
    raise BadInput(f"{name}={text[:40]!r} is not <layer>:<matrices> (matrices one of "
                   f"{', '.join(FFN_ON_HOST)})", hint=f"unset {name} or give e.g. {name}=14:down")


@dataclass(frozen=True)
class Var:
    name: str
    default: str
    parse: Callable[[str, str], object]


VARS = {
    "heartbeat_s": Var("TUNER_HEARTBEAT_S", "5", _seconds),
    "stale_s": Var("TUNER_STALE_S", "60", _seconds),
    "host": Var("TUNER_HOST", "", _host),
    "n_cpu_moe": Var("TUNER_N_CPU_MOE", "0", _count),
    "ffn_on_host": Var("TUNER_FFN_ON_HOST", "", _ffn_part),
    "fake_gpu_free_mib": Var("TUNER_FAKE_GPU_FREE_MIB", "", _mib),
    "fake_host_available_mib": Var("TUNER_FAKE_HOST_AVAILABLE_MIB", "", _mib),
}


def read(environ: Mapping[str, str]) -> TunerEnv:
    """The tuner's variables of ``environ``, parsed and checked; BadInput names the first bad
    one."""
    values = {field: var.parse(var.name, environ.get(var.name, var.default))
              for field, var in VARS.items()}
    env = TunerEnv(**values)  # type: ignore[arg-type]
    if env.stale_s <= env.heartbeat_s:
        raise BadInput(f"TUNER_STALE_S ({env.stale_s:g} s) must be more than TUNER_HEARTBEAT_S "
                       f"({env.heartbeat_s:g} s): a sweep that beats less often than that "
                       "looks gone to the others, and they run its settings again",
                       hint="unset both (60 and 5 s) or give e.g. TUNER_STALE_S=60 "
                            "TUNER_HEARTBEAT_S=5")
    return env


def current() -> TunerEnv:
    """This process's values, read now (a test may change a variable between two calls)."""
    return read(os.environ)
