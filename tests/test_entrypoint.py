"""The entry points, ``python -m tuner`` and the ``tuner`` script, go through tuner/__main__.py,
which imports the command line only when it runs: a spawned trial worker runs its parent's main
module again before its own work, and must not pay for the command line each time."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

from tests.cli_run import REPO, tuner
from tests.spaces import write_space


def test_the_entry_module_imports_no_command_line() -> None:
    code = ("import sys, tuner.__main__\n"
            "assert 'tuner.cli' not in sys.modules and 'click' not in sys.modules, 'imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_tuner_script_is_the_entry_module() -> None:
    (script,) = entry_points(group="console_scripts", name="tuner")
    assert script.value == "tuner.__main__:main"


def test_a_sweeps_workers_do_not_import_the_command_line(tiny_model: Path, tmp_path: Path) -> None:
    """Python's import log (inherited by spawned processes) names click once: the sweep's own
    import. Each worker that ran the command line again would add one."""
    space = write_space(tmp_path / "s.yaml", n_batch=[16], n_ubatch=[16], flash_attn=[False, True])
    proc = tuner("sweep", "--model", tiny_model, "--device", "cpu", "--space", space,
                 "--prompt-tokens", 8, "--gen-tokens", 2, "--repetitions", 1, "--warmup", 0,
                 "--trials-per-worker", 1, "--finalist-rounds", 0, "--served-requests", 0,
                 "--results", tmp_path / "r", "--out", tmp_path / "p.yaml",
                 python_flags=["-X", "importtime"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 trial(s) run now" in proc.stdout, proc.stdout  # two workers, one trial each
    imported = [ln.rsplit("|", 1)[-1].strip() for ln in proc.stderr.splitlines()
                if ln.startswith("import time:")]
    # The sweep imports the worker's module once, and each worker once more (its llama_cpp
    # import comes after its output went to its own log file).
    assert imported.count("tuner.worker.main") >= 3, "the workers' imports are in the log"
    assert imported.count("click") == 1, imported.count("click")
