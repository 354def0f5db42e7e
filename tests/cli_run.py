"""Run the real `tuner` command line in a subprocess, the way a user does."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def tuner(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None,
          timeout: float = 600, prefix: list[str] | None = None,
          python_flags: list[str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **(env or {})}
    cmd = [*(prefix or []), sys.executable, *(python_flags or []), "-m", "tuner",
           *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def wrote_config(stdout: str) -> bool:
    """Whether a sweep's output says it wrote the production config (its "wrote PATH" line;
    a sweep that left it to another says "another sweep of this study wrote it")."""
    return any(line.startswith("wrote ") for line in stdout.splitlines())


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
