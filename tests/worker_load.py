"""The real load log of the trial worker's own load (tuner/worker/main.py ``_load``: the model
settings applied as a trial's worker applies them) on this machine's build, in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def worker_load_log(model: Path, tmp: Path, **settings: object) -> str:
    """llama.cpp's log of loading ``model`` with ``ModelSettings(**settings)``."""
    code = ("import sys, llama_cpp\n"
            "from tuner.worker.main import _load\n"
            "from tuner.specs import ModelSettings\n"
            "llama_cpp.llama_backend_init()\n"
            f"model, _ = _load(llama_cpp, sys.argv[1], ModelSettings(**{settings!r}))\n"
            "assert model\n")
    proc = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True,
                          text=True, timeout=120, check=False, cwd=tmp,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr
