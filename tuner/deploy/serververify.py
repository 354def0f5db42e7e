"""``tuner verify`` of llama_cpp.server's deployment (the production config, its sidecar and
environment file): the files read and checked, ``python -m llama_cpp.server --config_file``
started the way the deployment would (the sidecar's environment, another working directory),
the workload sent as to any llama_cpp.server. The checks are tuner/deploy/verify.py's."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tuner.deploy.configcheck import ConfigInvalid, check_config
from tuner.deploy.deployed import MeasuredBuild, Stored, local_url
from tuner.deploy.httpserve import measure_http, running_server, wait_ready
from tuner.deploy.prodconfig import sidecar_path
from tuner.deploy.service import env_file_path
from tuner.deploy.sidecar import (
    check_model_path,
    config_entry,
    read_sidecar,
    service_environment,
)
from tuner.errors import BadInput
from tuner.machine.childenv import service_env
from tuner.machine.yamlread import load_unique
from tuner.results.records import ServedFigures
from tuner.specs import Frozen, TrialSpec, Workload


class Deployment(Frozen):
    """The config, its sidecar and the service environment, read and checked."""

    config_path: Path
    config: dict[str, Any]
    sidecar: dict[str, Any]
    env: dict[str, str]
    model_path: str
    spec: TrialSpec
    workload: Workload


def load_deployment(config_path: Path) -> Deployment:
    config_path = Path(config_path).absolute()
    if not config_path.is_file():
        raise BadInput(f"no config at {config_path}",
                       hint="give the production config: tuner verify configs/production.yaml")
    try:
        config = load_unique(config_path.read_text())
    except (OSError, UnicodeDecodeError, RecursionError, yaml.YAMLError) as e:
        raise BadInput(f"cannot read {config_path} as YAML: {str(e).splitlines()[0]}") from None
    entry = config_entry(config, config_path)
    side = read_sidecar(sidecar_path(config_path))
    model = entry.get("model")
    check_model_path(model if isinstance(model, str) else "", config_path)
    env = service_environment(env_file_path(config_path), side)
    return Deployment(config_path=config_path, config=config,
                      sidecar=side.model_dump(mode="json"), env=env, model_path=str(model),
                      spec=side.spec, workload=side.workload)


def check_server_config(dep: Deployment) -> None:
    """The config read by the server's own settings classes (unknown keys, wrong types), in the
    service's environment, before any server starts: bad input is exit 2, not a server that
    prints its banner and exits."""
    try:
        check_config(dep.config, None, service_env(dep.env))
    except ConfigInvalid as e:
        raise BadInput(f"{dep.config_path}: {e.message}",
                       hint="the server would refuse it; write the config with tuner sweep") from None


@dataclass(frozen=True)
class PythonServer:
    """llama_cpp.server's deployment as a ``DeployedService`` (tuner/deploy/deployed.py)."""

    dep: Deployment

    @property
    def env(self) -> dict[str, str]:
        """The server process's environment: the service basics and the deployment's own."""
        return service_env(self.dep.env)

    @property
    def stored(self) -> Stored:
        dep, env_file = self.dep, env_file_path(self.dep.config_path)
        build = dep.sidecar.get("build") or {}
        measured_env = dep.sidecar.get("environment") or {}
        return Stored(
            path=dep.config_path, name="the server", spec=dep.spec, workload=dep.workload,
            build=MeasuredBuild(
                lib_dir=build.get("lib_dir"),
                system_info=measured_env.get("system_info") or "",
                lib_hint=f"set LLAMA_CPP_LIB_PATH={build.get('lib_dir')} in {env_file}",
                rebuild_hint=(f"recreate the build: {build.get('rebuild', 'tuner build')}; "
                              f"LLAMA_CPP_LIB_PATH in {env_file}")),
            figures=dep.sidecar, figures_name="the sidecar's")

    def start(self, stack: ExitStack, port: int, cwd: Path, log_path: Path,
              timeout_s: float) -> int:
        proc = stack.enter_context(running_server(self.dep.config, self.dep.config_path.name,
                                                  self.env, port, cwd, log_path))
        wait_ready(proc, local_url(port), log_path, timeout_s)
        return proc.pid

    def measure(self, url: str, requests: int, timeout_s: float) -> ServedFigures:
        return measure_http(url, self.dep.model_path, self.dep.workload, self.env, requests,
                            timeout_s)


def service(config_path: Path) -> PythonServer:
    """The deployment of ``config_path``, its config checked as the server would read it."""
    dep = load_deployment(config_path)
    check_server_config(dep)
    return PythonServer(dep)
