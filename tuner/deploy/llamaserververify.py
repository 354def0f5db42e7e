"""``tuner verify`` of a llama-server deployment (``production.llama-server.args`` and the two
files beside it): the binary started as the deployment would (its arguments and environment
files, from another working directory, a free loopback port), the library it mapped and the
build flags and placement from its own load log checked against what was measured, the
sweep's workload over HTTP compared with the figures stored. The same failure classes and
exit codes as for llama_cpp.server (tuner/deploy/verify.py)."""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tuner.builds.buildinfo import find_system_info, variant_of
from tuner.deploy.httpserve import free_port
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
from tuner.deploy.sidecar import check_url
from tuner.deploy.verify import (
    VerifyResult,
    _build_diff,
    _describe,
    _log_path,
    compare,
    gap_line,
    loaded_library,
)
from tuner.errors import BadInput, EnvironmentUnfit
from tuner.evidence.placement import expect, parse_load_log, verify


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


def run_verify(path: Path, *, url: str | None = None, port: int | None = None,
               tolerance: float = 0.10, requests: int = 5,
               timeout_s: float = 300) -> VerifyResult:
    """Verify the llama-server deployment at ``path``; see the module docstring."""
    url = check_url(url) if url is not None else None
    dep = load(path)
    prompt_env = service_env(dep.spec, dep.lib_dir)
    side: dict[str, Any] = {"served": dep.served.model_dump(mode="json") if dep.served else None,
                            "figures": dep.raw or {}}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tuner-verify-")))
        log_path: Path | None = None
        facts: dict[str, Any] = {}
        if url is None:
            port = free_port(port)
            log_path = _log_path(dep.args_path, None, tmp)
            args = with_port(dep.run_args, "127.0.0.1", port)
            proc = stack.enter_context(running(Path(dep.binary), args, process_env(dep.run_env),
                                               tmp, log_path))
            url = f"http://127.0.0.1:{port}"
            wait_healthy(proc, url, log_path, timeout_s)
            facts = _check(dep, proc.pid, log_path.read_text(errors="replace"))
            if facts["placement_reasons"]:
                return VerifyResult(config=str(dep.args_path), url=url, log_path=str(log_path),
                                    tolerance=tolerance, **facts)
        measured = measure(url.rstrip("/"), dep.model, dep.workload, prompt_env, requests,
                           timeout_s)
    kind, note, checks = compare(measured, side, tolerance)
    note = note.replace("the sidecar's", "the deployment's llama-server")
    return VerifyResult(config=str(dep.args_path), url=url,
                        log_path=str(log_path) if log_path else None, measured=measured,
                        reference_kind=kind, reference_note=note, checks=checks,
                        gap=gap_line(measured, side), tolerance=tolerance, **facts)


def _check(dep: LoadedDeployment, pid: int, log: str) -> dict[str, Any]:
    """Library (the process's memory map), build flags and placement (its load log)."""
    library = loaded_library(pid)
    env_path = files_of(dep.args_path)["env"]
    if library and Path(library).resolve().parent != Path(dep.lib_dir).resolve():
        raise EnvironmentUnfit(f"build mismatch: llama-server loaded {library}, the sweep "
                               f"measured the build in {dep.lib_dir}",
                               hint=f"set LD_LIBRARY_PATH={dep.lib_dir} first in {env_path}")
    loaded = find_system_info(log)
    measured = find_system_info(dep.system_info or "")
    if loaded is not None and measured is not None and (diff := _build_diff(measured, loaded)):
        raise EnvironmentUnfit(f"build mismatch: llama-server's library is {_describe(loaded)}, "
                               f"the sweep measured {_describe(measured)} ({diff})",
                               hint=f"recreate the build: {dep.rebuild}")
    verdict = verify(parse_load_log(log), expect(
        dep.spec, dep.workload, build=variant_of(measured) if measured else None))
    return {"placement": verdict.summary, "placement_reasons": verdict.reasons,
            "library": library}
