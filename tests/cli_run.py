"""Run the real `tuner` command line in a process of its own, as a user does: forked from a
server that has imported it (tests/cli_fork.py), or started as ``python -m tuner``."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from tests import cli_fork
from tests.spaces import write_space

REPO = Path(__file__).resolve().parent.parent

# TUNER_TEST_EXEC=1: every command a new interpreter (python -m tuner), none forked.
EXEC_ALWAYS = os.environ.get("TUNER_TEST_EXEC") == "1"


def _environments(env: dict[str, str] | None) -> tuple[dict[str, str], dict[str, str]]:
    """Every command's environment (this process's, the checkout on the path, wide output),
    and this command's: that plus ``env``."""
    base = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return base, {**base, **(env or {})}


def tuner(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None,
          timeout: float = 600, prefix: list[str] | None = None,
          python_flags: list[str] | None = None,
          exec_: bool = False) -> subprocess.CompletedProcess:
    """``tuner ARGS`` in a process of its own: forked from a server that has imported the
    command line (tests/cli_fork.py), or, with ``exec_``, a ``prefix`` (another user), interpreter
    flags or TUNER_TEST_EXEC=1, started as ``python -m tuner``."""
    base_env, full_env = _environments(env)
    if not (exec_ or prefix or python_flags or EXEC_ALWAYS):
        return cli_fork.run([str(a) for a in args], str(cwd or os.getcwd()), full_env, timeout,
                            base_env)
    cmd = [*(prefix or []), sys.executable, *(python_flags or []), "-m", "tuner",
           *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def start_tuner(*args: object, env: dict[str, str] | None = None,
                new_session: bool = False) -> subprocess.Popen | cli_fork.Forked:
    """``tuner ARGS`` running while the test goes on (sweeps that race, a sweep to kill):
    forked as tuner() forks, or with TUNER_TEST_EXEC=1 started as ``python -m tuner``. Either
    has pid, poll, wait, communicate, send_signal and returncode, stdout and stderr as text."""
    base_env, full_env = _environments(env)
    argv = [str(a) for a in args]
    if EXEC_ALWAYS:
        return subprocess.Popen([sys.executable, "-m", "tuner", *argv], env=full_env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=new_session)
    return cli_fork.start(argv, os.getcwd(), full_env, base_env, new_session)


def wrote_config(stdout: str) -> bool:
    """Whether a sweep's output says it wrote the production config (its "wrote PATH" line;
    a sweep that left it to another says "another sweep of this study wrote it")."""
    return any(line.startswith("wrote ") for line in stdout.splitlines())


def served_cpu_sweep(model: Path, root: Path, space: Path, builds: Path,
                     served_requests: int) -> tuple[Path, subprocess.CompletedProcess]:
    """A real CPU sweep of the settings in ``space`` with its finalist and served stages at a
    small workload (32 + 8 tokens, n_ctx 64, one repetition): the winner served through
    llama_cpp.server and, where ``builds`` holds a llama-server, through it too; the config
    and both deployments written under ``root/configs``. The config's path and the process."""
    out = root / "configs" / "production.yaml"
    proc = tuner("sweep", "--model", model, "--device", "cpu", "--space", space,
                 "--prompt-tokens", 32, "--gen-tokens", 8, "--n-ctx", 64, "--repetitions", 1,
                 "--results", root / "results", "--out", out, "--finalist-rounds", 1,
                 "--served-requests", served_requests, "--builds", builds, cwd=root)
    return out, proc


def one_setting_served_sweep(model: Path, root: Path, builds: Path,
                             **setting: list) -> tuple[Path, str]:
    """served_cpu_sweep, 2 requests served, of the one setting ``setting`` (space lists of one
    value each) at n_batch and n_ubatch 32 and one thread, asserted to succeed: the config's
    path and the sweep's output."""
    space = write_space(root / "space.yaml", n_batch=[32], n_ubatch=[32], n_threads=[1],
                        **setting)
    out, proc = served_cpu_sweep(model, root, space, builds, served_requests=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout + proc.stderr


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The error a failed command printed; asserts it is one 'error:' line (plus an optional
    'hint:' line) and no traceback."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert all(ln.startswith(("error: ", "hint: ")) for ln in lines), proc.stderr
    return errors[0]


def digest_tree(root: Path) -> dict[str, str]:
    """Content hash of every file under root: 'nothing stored was changed'."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}
