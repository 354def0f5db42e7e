"""A real ``python -m llama_cpp.server`` on a free loopback port, and the sweep's workload timed
over HTTP as a client of the service sees it (streamed completions: time to first token,
generation, request). Used by ``tuner verify`` and by served figures taken through a server."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx
import yaml

from tuner.deploy.served import figures, prompts_for
from tuner.deploy.serverlaunch import server_module
from tuner.errors import BadInput, EnvironmentUnfit
from tuner.machine.childenv import service_env
from tuner.machine.children import popen_kwargs, stop
from tuner.machine.tempdirs import temp_dir
from tuner.results.records import ServedFigures
from tuner.specs import Workload
from tuner.worker.served import request_body


class Service(Protocol):
    """A service the workload is timed through over HTTP (``/v1/completions``, streamed):
    started on a loopback port as a context manager (entering starts the process, leaving
    stops it), then timed by ``measure_service``. llama_cpp.server is one
    (``LlamaCppService``); another server (llama.cpp's own ``llama-server``) plugs in by the
    same three members."""

    name: str  # what reports call it

    def __enter__(self) -> subprocess.Popen[bytes]: ...

    def __exit__(self, *exc: object) -> None: ...


class LlamaCppService:
    """``python -m llama_cpp.server`` on one model entry, as ``running_server`` starts it."""

    name = "llama_cpp.server"

    def __init__(self, entry: dict[str, Any], env: dict[str, str], port: int, tmp: Path,
                 log_path: Path) -> None:
        self._server = running_server({"models": [entry]}, "served.yaml", env, port, tmp,
                                      log_path)

    def __enter__(self) -> subprocess.Popen[bytes]:
        return self._server.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)


def measure_service(make: Callable[[int, Path, Path], Service], model_path: str,
                    env: dict[str, str], workload: Workload, requests: int,
                    timeout_s: float) -> tuple[ServedFigures, str]:
    """Start the service ``make(port, workdir, log_path)`` builds on a free loopback port,
    time the workload over HTTP once it answers, stop it; (figures, the service's log)."""
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(temp_dir("tuner-served-")))
        port, log_path = free_port(None), tmp / "server.log"
        proc = stack.enter_context(make(port, tmp, log_path))
        url = f"http://127.0.0.1:{port}"
        wait_ready(proc, url, log_path, timeout_s)
        measured = measure_http(url, model_path, workload, env, requests, timeout_s)
        return measured, log_path.read_text(errors="replace")


def serve_and_measure(entry: dict[str, Any], env: dict[str, str], workload: Workload,
                      requests: int, timeout_s: float) -> tuple[ServedFigures, str]:
    """Start a real server on one model entry (a fresh process), time the workload over HTTP,
    stop it; (figures, the server's log). For served figures taken the way ``tuner verify``
    takes them: the event loop, the streaming threads and the client are all in the picture."""
    server_env = service_env(env)
    return measure_service(
        lambda port, tmp, log: LlamaCppService(entry, server_env, port, tmp, log),
        entry["model"], server_env, workload, requests, timeout_s)


def free_port(port: int | None) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port or 0))
        except OSError:
            raise BadInput(f"port {port} is in use on 127.0.0.1",
                           hint="pick another with --port, or leave it out for a free one") from None
        return s.getsockname()[1]


class running_server:
    """The real server on a copy of the config that only changes host and port, started from
    a temporary working directory (the paths in the config must not depend on it)."""

    def __init__(self, config: dict[str, Any], name: str, env: dict[str, str], port: int,
                 tmp: Path, log_path: Path) -> None:
        self.args = (config, name, env, port, tmp, log_path)

    def __enter__(self) -> subprocess.Popen[bytes]:
        config, name, env, port, tmp, log_path = self.args
        config = {**config, "host": "127.0.0.1", "port": port}
        copy = tmp / name
        copy.write_text(yaml.safe_dump(config, sort_keys=False))
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", server_module(env), "--config_file", str(copy)],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp,
                **popen_kwargs())  # ends with this command, even a SIGKILLed one
        return self.proc

    def __exit__(self, *exc: object) -> None:
        stop(self.proc)


def wait_ready(proc: subprocess.Popen[bytes], url: str, log_path: Path, timeout_s: float,
               endpoint: str = "/v1/models", what: str = "the server") -> None:
    """Until ``endpoint`` answers 200 (``what``: the server's name in the error); the server's
    exit or a timeout is one line with its log's last statements."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EnvironmentUnfit(f"{what} exited with status {proc.returncode} before "
                                   f"answering: {_tail(log_path)}", hint=f"its log: {log_path}")
        with suppress(httpx.HTTPError):
            if httpx.get(f"{url}{endpoint}", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise EnvironmentUnfit(f"{what} did not answer within {timeout_s:.0f} s: "
                           f"{_tail(log_path)}", hint=f"its log: {log_path}")


def _tail(log_path: Path, n: int = 3) -> str:
    # The last statements, not the usage text or a traceback's frames.
    lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines()
             if ln.strip() and not ln.startswith(("usage:", "  ", "options:", "Traceback"))]
    return " | ".join(lines[-n:]) or "(no output)"


def measure_http(base: str, model_path: str, wl: Workload, env: dict[str, str], requests: int,
                 timeout_s: float, sampling: dict[str, float | int] | None = None,
                 source: Literal["server", "llama-server"] = "server") -> ServedFigures:
    """The workload over HTTP: one warm-up then ``requests`` streamed completions, each prompt
    new from its first token, exactly gen_tokens generated (``sampling``: parameters sent with
    each request, for a server whose defaults differ from llama_cpp.server's)."""
    made = prompts_for(model_path, wl.prompt_tokens, requests + 1, env)
    runs = []
    with httpx.Client(timeout=timeout_s) as client:
        for prompt in made.prompts:
            body = {**request_body(prompt, wl.gen_tokens, made.eog), **(sampling or {})}
            runs.append(_timed_request(client, base, body))
    return figures(runs[1:], source=source, prompt_tokens=wl.prompt_tokens,
                   gen_tokens=wl.gen_tokens, warmup=1,
                   max_prefix_reuse=made.max_prefix_reuse, lengths=made.lengths[1:],
                   forced_prefix=made.forced_prefix)


def _timed_request(client: httpx.Client, base: str, body: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    first = last = None
    finish = None
    try:
        with client.stream("POST", f"{base}/v1/completions", json=body) as reply:
            if reply.status_code != 200:
                reply.read()
                raise EnvironmentUnfit(f"the service answered {reply.status_code}: "
                                       f"{reply_line(reply)}")
            for data in _events(reply.iter_lines()):
                now = time.perf_counter()
                if "error" in data:
                    raise EnvironmentUnfit(f"the service streamed an error: {_error_line(data)}")
                choices = data.get("choices")
                if not choices:
                    continue  # a chunk of usage or timings alone, after the last token
                first = first if first is not None else now
                last = now
                finish = choices[0].get("finish_reason") or finish
    except httpx.HTTPError as e:
        raise EnvironmentUnfit(f"cannot reach the service at {base}: {e}") from None
    if first is None or last is None:
        raise EnvironmentUnfit(f"the service at {base} streamed no completion chunk")
    return {"ttft_s": first - t0, "request_s": last - t0, "gen_s": last - first,
            "finish_reason": finish}


def reply_line(reply: httpx.Response) -> str:
    """An error reply as one short line: an HTML page (not an OpenAI-compatible API) by its
    title, a JSON error (``{"error": ...}``) by its message, anything else by its first line."""
    text = reply.text
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and "error" in data:
        return _error_line(data)
    if "html" in reply.headers.get("content-type", "") or text.lstrip().startswith("<"):
        title = re.search(r"<title>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
        what = f" titled {' '.join(title.group(1).split())[:80]!r}" if title else ""
        return f"an HTML page{what}, not the completions API of a llama_cpp.server"
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "(empty reply)")
    return first[:200]


def _error_line(data: dict[str, Any]) -> str:
    """An error event (``{"error": {"message": ...}}`` or ``{"error": "..."}``) as one line."""
    err = data["error"]
    text = err.get("message", err) if isinstance(err, dict) else err
    return " ".join(str(text).split())[:200]


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators and ": ping" comments
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        try:
            data = json.loads(payload)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise EnvironmentUnfit(f"the service streamed what is not a JSON object: "
                                   f"{payload[:120]!r}")
        yield data
