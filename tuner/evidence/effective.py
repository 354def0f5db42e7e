"""The settings a trial measured, as llama_cpp.server's ``ModelSettings`` names them, and the
check that a config loaded by the server's ``ConfigFileSettings`` yields exactly those.

The server's defaults are not ``Llama()``'s, nor what the worker measured with:

================  ===========================  ===============  ======================
field             server ``ModelSettings``     ``Llama()``      the trial's worker
================  ===========================  ===============  ======================
logits_all        True                         False            False (last token only)
n_threads         cores // 2                   cores // 2       trial's, else all cores
n_threads_batch   cores                        cores            same as n_threads
n_ctx             2048                         512              workload's n_ctx
n_gpu_layers      0                            0                trial's (-1: all)
use_mlock         llama_supports_mlock() (on)  False            False
use_mmap          llama_supports_mmap()        True             trial's (mmap unless asked)
flash_attn        False                        False            trial's
type_k / type_v   None (f16)                   None (f16)       trial's
offload_kqv       True                         True             True
embedding         False                        False            False
cache             False (no prompt cache)      no cache         no cache
verbose           True                         True             log captured
================  ===========================  ===============  ======================

So every one of these is written into the config explicitly, and the config is read back the
way the server reads it, in a child process with the service's environment (the server's
settings are pydantic-settings: a field the file leaves out can come from an environment
variable such as ``N_THREADS``)."""

from __future__ import annotations

from typing import Any

from tuner.errors import BadInput, TunerError
from tuner.settings import server_fields, undeployable
from tuner.specs import ContextSettings, ModelSettings, TrialSpec, Workload

# What every trial's worker runs that is no tunable setting, in the server's field names.
FIXED: dict[str, Any] = {
    "offload_kqv": True,
    "logits_all": False,
    "embedding": False,
    "use_mlock": False,
    "cache": False,
    # The server passes verbose to Llama: the load log on stderr is how `tuner verify`
    # proves placement, and the per-request timing print is part of the served path.
    "verbose": True,
}

# Server ModelSettings fields that change speed or what runs where; every one is written:
# the settings' own (tuner/settings.py), the workload's context size, the threads, FIXED.
SPEED_FIELDS: tuple[str, ...] = (
    *server_fields(TrialSpec(model=ModelSettings(), context=ContextSettings())),
    "n_ctx", "n_threads", "n_threads_batch", *FIXED,
)


def trial_settings(spec: TrialSpec, workload: Workload, threads: int | None) -> dict[str, Any]:
    """What the trial's worker ran with, in the server's field names and encodings.
    ``threads``: the thread count it used (its own setting, else the cores it had).
    A setting the server cannot hold at the value measured is refused (BadInput)."""
    if why := undeployable(spec):
        raise BadInput("; ".join(why), hint="pick a trial measured at the server's value")
    settings: dict[str, Any] = {**server_fields(spec), "n_ctx": workload.n_ctx}
    if threads:
        settings["n_threads"] = threads
        settings["n_threads_batch"] = threads
    settings.update(FIXED)
    return settings


def differences(effective: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """One sentence per speed-relevant field whose effective value is not the measured one."""
    out = []
    for name in SPEED_FIELDS:
        if name not in expected:
            continue
        if effective.get(name) != expected[name]:
            out.append(f"{name} is {effective.get(name)!r} in the loaded config, the trial "
                       f"measured {expected[name]!r}")
    return out


def check_effective(effective: dict[str, Any], expected: dict[str, Any]) -> None:
    """Raise (exit 1: a tuner bug or a hostile environment) when the server would not run what
    was measured."""
    diffs = differences(effective, expected)
    if diffs:
        raise TunerError("the config as llama_cpp.server loads it differs from what was "
                         "measured: " + "; ".join(diffs),
                         hint="an environment variable of the service (e.g. N_THREADS) or "
                              "a server default overrides it")
