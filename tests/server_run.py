"""Start a real `python -m llama_cpp.server --config_file FILE` on a loopback port and ask it
for a completion."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(config: Path, log_path: Path, port: int, timeout: float = 120,
                   module: str = "llama_cpp.server") -> Iterator[tuple[str, dict]]:
    """Yields (base url, /v1/models answer). The environment the sidecar names is applied, as
    a deployment would; HOST/PORT/CONFIG_FILE from the caller's environment are removed
    because the server lets them override the file. ``module``: what is started (tuner's
    launcher, tuner.deploy.serverlaunch, for a deployment that needs it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT", "CONFIG_FILE")}
    sidecar = config.with_name(config.name.rsplit(".", 1)[0] + ".tuner.json")
    if sidecar.exists():
        env.update(json.loads(sidecar.read_text()).get("env", {}))
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--config_file", str(config)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=config.parent)
    try:
        yield base, _wait_ready(proc, f"{base}/v1/models", log_path, timeout)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def complete(base: str, prompt: str = "The capital of France is", max_tokens: int = 8) -> str:
    reply = httpx.post(f"{base}/v1/completions", timeout=60, json={
        "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["text"]


def _wait_ready(proc: subprocess.Popen, url: str, log_path: Path, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n"
                        f"{log_path.read_text(errors='replace')[-3000:]}")
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"server not ready after {timeout} s:\n"
                f"{log_path.read_text(errors='replace')[-3000:]}")
