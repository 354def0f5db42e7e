"""One kind of deployment as ``tuner verify`` checks it: what differs per service (how its
files are read, how its server is started, how its workload is sent) behind a small interface,
so that the checks, the comparison and the result are one flow for every kind
(tuner/deploy/verify.py). llama_cpp.server's config is tuner/deploy/serververify.py, llama-server's
arguments tuner/deploy/llamaserververify.py; a new deploy target implements ``DeployedService``
and is chosen by the CLI."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tuner.results.records import ServedFigures
from tuner.specs import TrialSpec, Workload

HOST = "127.0.0.1"  # where tuner verify starts a server: loopback only


def local_url(port: int) -> str:
    """The URL of a server tuner verify started on ``port``."""
    return f"http://{HOST}:{port}"


@dataclass(frozen=True)
class MeasuredBuild:
    """The build the sweep measured, as the deployment stores it, and how to fix a server that
    loads another."""

    lib_dir: str | None  # the folder of the libllama the server must map (None: not checked)
    system_info: str  # the measured library's system-info line ("" when not stored)
    lib_hint: str  # how to point the service at lib_dir
    rebuild_hint: str  # how to make the build again


@dataclass(frozen=True)
class Stored:
    """What a deployment's files say: which file, what was measured, with which build."""

    path: Path  # the file verified: the config, or the llama-server arguments
    name: str  # the server in messages: "the server", "llama-server"
    spec: TrialSpec
    workload: Workload
    build: MeasuredBuild
    figures: dict[str, Any]  # {"served": ServedFigures as JSON or {"error"}, "figures": raw}
    figures_name: str  # whose served figures they are: "the sidecar's", ...


class DeployedService(Protocol):
    """A deployment read from its files (the reader raises BadInput on bad ones)."""

    @property
    def stored(self) -> Stored: ...

    def start(self, stack: ExitStack, port: int, cwd: Path, log_path: Path,
              timeout_s: float) -> int:
        """Start the server as the deployment would, on ``local_url(port)``, from ``cwd``, its
        output to ``log_path``; stopped when ``stack`` closes. Returns its pid once it answers
        (a server that exits or never answers is one EnvironmentUnfit line)."""
        ...

    def measure(self, url: str, requests: int, timeout_s: float) -> ServedFigures:
        """The sweep's workload over HTTP to ``url``, as this service is sent requests."""
        ...
