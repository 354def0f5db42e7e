"""The clean, explicit environment of the helper processes that import llama_cpp outside a worker
(the production-config validation): only what they need, never the caller's unrelated variables.

llama_cpp.server's settings are pydantic-settings classes that read any environment variable
named like one of their fields (``MODEL``, ``SEED``, ``PORT``, ``VERBOSE``...), and llama_cpp
loads its library from ``LLAMA_CPP_LIB_PATH``: a caller's stale or unrelated value must neither
break nor change the check."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

# What a Python process needs to start and to load the llama library (and CUDA's) on this host.
PASSED = ("PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "LD_LIBRARY_PATH")
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding tuner/ (tuner/machine/this)


def child_env(lib_dir: str | None) -> dict[str, str]:
    """The variables passed on, plus the build's library folder when it has its own."""
    env = {k: os.environ[k] for k in PASSED if k in os.environ}
    env.setdefault("PATH", os.defpath)
    if lib_dir:
        env["LLAMA_CPP_LIB_PATH"] = str(lib_dir)
    return env


# A server process also keeps where its Python packages are and which GPUs it may use.
SERVICE_PASSED = PASSED + ("PYTHONPATH", "VIRTUAL_ENV", "CUDA_VISIBLE_DEVICES")


def service_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a real llama_cpp.server started by tuner: the variables a service
    needs plus ``extra`` (the deployment's own), never the caller's others. The server's
    settings read variables named like their fields (MODELS, PORT, ...): a benchmark script's
    MODELS variable once stopped a GPU run's server."""
    env = {k: os.environ[k] for k in SERVICE_PASSED if k in os.environ}
    env.setdefault("PATH", os.defpath)
    return {**env, **extra}


def _llama_cpp_root() -> str | None:
    """Where this process would import llama_cpp from, found without importing it (the parent
    never imports llama_cpp): an install reached through PYTHONPATH must stay reachable."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(next(iter(spec.submodule_search_locations))).parent)


def module_command(module: str) -> list[str]:
    """Run ``python -m module`` of this tuner in isolated mode (no PYTHON* variables, no user
    site), finding tuner and llama_cpp where this process finds them."""
    roots = [PACKAGE_ROOT] + [r for r in [_llama_cpp_root()] if r and r != PACKAGE_ROOT]
    code = (f"import sys, runpy; sys.path[:0] = {roots!r}; "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    return [sys.executable, "-I", "-c", code]
