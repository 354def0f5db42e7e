"""``tuner verify`` of a llama-server deployment (``production.llama-server.args`` and the two
files beside it): the files read and checked, the binary started as the deployment would (its
arguments and environment files, from another working directory, a free loopback port), the
workload sent with llama-server's sampling. The checks, the failure classes and the exit codes
are tuner/deploy/verify.py's, as for llama_cpp.server."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import ValidationError

from tuner.deploy.deployed import HOST, MeasuredBuild, Stored, local_url
from tuner.deploy.llamaserver import (
    LlamaServerDeployment,
    files_of,
    measure,
    model_of,
    process_env,
    read_args,
    running,
    wait_healthy,
    with_port,
)
from tuner.deploy.service import read_env_file, service_env
from tuner.errors import BadInput
from tuner.machine.cpuload import SIDECAR_KEY
from tuner.results.records import ServedFigures


class LoadedDeployment(LlamaServerDeployment):
    """The stored deployment with the arguments and environment as the files hold them now."""

    args_path: Path
    run_args: list[str]
    run_env: dict[str, str]


def load(path: Path) -> LoadedDeployment:
    files = files_of(path)
    if not files["json"].is_file():
        raise BadInput(f"no llama-server deployment at {files['json']}",
                       hint="the sweep writes it when a llama-server is built: "
                            "tuner build --variant cpu --server-only")
    try:
        dep = LlamaServerDeployment.model_validate_json(files["json"].read_text())
    except (OSError, ValidationError) as e:
        raise BadInput(f"{files['json']} is not a tuner llama-server deployment: "
                       f"{str(e).splitlines()[0]}") from None
    if not files["args"].is_file():
        raise BadInput(f"no arguments file {files['args']} beside {files['json'].name}")
    args = read_args(files["args"])
    env = read_env_file(files["env"]) if files["env"].is_file() else dict(dep.env)
    model = model_of(args)
    if model is None:
        raise BadInput(f"{files['args']} names no model (-m)")
    if not Path(model).is_file():
        raise BadInput(f"model {model} named in {files['args']} not found",
                       hint="the arguments hold an absolute path: copy the model there, or "
                            "rerun the sweep on this host")
    if Path(model).stat().st_size != dep.model_bytes:
        raise BadInput(f"model {model} named in {files['args']} is not the model measured "
                       f"({Path(model).stat().st_size} bytes, the sweep measured "
                       f"{dep.model_bytes})", hint=f"the sweep measured {dep.model}")
    return LoadedDeployment(**dep.model_dump(), args_path=files["args"], run_args=args,
                            run_env=env)


@dataclass(frozen=True)
class LlamaServer:
    """llama-server's deployment as a ``DeployedService`` (tuner/deploy/deployed.py)."""

    dep: LoadedDeployment

    @property
    def stored(self) -> Stored:
        dep = self.dep
        return Stored(
            path=dep.args_path, name="llama-server", spec=dep.spec, workload=dep.workload,
            build=MeasuredBuild(
                lib_dir=dep.lib_dir, system_info=dep.system_info or "",
                lib_hint=(f"set LD_LIBRARY_PATH={dep.lib_dir} first in "
                          f"{files_of(dep.args_path)['env']}"),
                rebuild_hint=f"recreate the build: {dep.rebuild}"),
            figures={"served": dep.served.model_dump(mode="json") if dep.served else None,
                     "figures": dep.raw or {},
                     SIDECAR_KEY: asdict(dep.machine_load) if dep.machine_load else None},
            figures_name="the deployment's llama-server")

    def start(self, stack: ExitStack, port: int, cwd: Path, log_path: Path,
              timeout_s: float) -> int:
        args = with_port(self.dep.run_args, HOST, port)
        proc = stack.enter_context(running(Path(self.dep.binary), args,
                                           process_env(self.dep.run_env), cwd, log_path))
        wait_healthy(proc, local_url(port), log_path, timeout_s)
        return proc.pid

    def measure(self, url: str, requests: int, timeout_s: float) -> ServedFigures:
        """The workload with the prompts made in the measured library's environment."""
        return measure(url, self.dep.model, self.dep.workload,
                       service_env(self.dep.spec, self.dep.lib_dir, self.dep.model), requests, timeout_s)


def service(path: Path) -> LlamaServer:
    """The llama-server deployment at ``path`` (any of its files, or the YAML beside them)."""
    return LlamaServer(load(path))
