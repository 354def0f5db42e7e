"""llama.cpp's own C++ server (``llama-server``) as a second deploy target: the command line and
environment that run a trial's settings in it, written beside the production YAML; the server
started on a free loopback port, the sweep's workload timed over HTTP as for llama_cpp.server,
and the placement proven from its own load log.

``tuner build --server`` compiles llama-server from the same llama-cpp-python source. A server
built without CUDA loads whichever ``libllama``/``libggml*`` ``LD_LIBRARY_PATH`` names first
(its RUNPATH, ``$ORIGIN/../lib``, comes after it), so one CPU-built server drives every build's
library: the chosen build's ``lib`` folder goes first in ``LD_LIBRARY_PATH``.

Files beside ``configs/production.yaml``: ``production.llama-server.args`` (one argument per
line: ``mapfile -t A < FILE; llama-server "${A[@]}"``), ``production.llama-server.env``
(``KEY=value``, as the YAML's ``.env``) and ``production.llama-server.json`` (the binary, the
build, the model's size, the spec and workload measured, the figures, for ``tuner verify``).
A preset INI for ``--models-preset`` is not written: in this llama.cpp it configures the router
mode, which proxies every request to a child server (another hop the figures would not hold)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from tuner.builds.catalog import discover_builds, installed_version
from tuner.deploy.httpserve import free_port, measure_http, reply_line, wait_ready
from tuner.deploy.llamaserverknobs import GREEDY_TOKENS, Tried
from tuner.deploy.prodconfig import YAML_SUFFIXES, _render_json
from tuner.deploy.served import check_placement, prompts_for
from tuner.deploy.service import render_env_file, service_env
from tuner.errors import BadInput, EnvironmentUnfit, TunerError
from tuner.evidence.effective import trial_settings
from tuner.machine import childenv
from tuner.machine.children import popen_kwargs, stop
from tuner.machine.cpuload import OtherLoad
from tuner.machine.envvars import VARS
from tuner.machine.output import replace_files
from tuner.machine.tempdirs import temp_dir
from tuner.results.records import ServedFigures
from tuner.settings import split_mode_name
from tuner.specs import Frozen, TrialSpec, Workload
from tuner.worker.llamaparams import ffn_on_host_of

SERVER_BINARY = "llama-server"
SUFFIX = ".llama-server"
FORMAT = "tuner-llama-server/1"
# llama_cpp.server's sampling defaults (its CreateCompletionRequest; tests/test_llamaserver.py
# checks them against the installed package), sent to llama-server with every request so that
# both services sample alike (llama-server's own defaults differ: top_k 40 vs min_p, no repeat
# penalty).
SAMPLING: dict[str, float | int] = {"temperature": 0.8, "top_p": 0.95, "top_k": 40,
                                    "min_p": 0.05, "repeat_penalty": 1.1,
                                    "presence_penalty": 0.0, "frequency_penalty": 0.0}
# llama.cpp prints which device each layer and its KV cache went to at debug level only, which
# llama-server shows at verbosity 5: the placement proof (tuner/evidence/placement.py) needs those
# lines, as llama_cpp.server's config has verbose on for the same reason. Without its timestamp
# and level prefix and colours the lines read as llama_cpp.server's log does.
PROOF_ARGS = ["--log-verbosity", "5", "--no-log-prefix", "--no-log-timestamps",
              "--log-colors", "off"]
_ON_OFF = {True: "on", False: "off"}


class LlamaServerDeployment(Frozen):
    """``production.llama-server.json``: what runs, and what it was measured at."""

    format: str = FORMAT
    binary: str
    args: list[str]  # as in the .args file, --host/--port included
    env: dict[str, str]  # as in the .env file
    lib_dir: str  # the build whose libllama the server must load
    build: str  # the build's name (builds/<name>, or installed)
    rebuild: str  # the command that makes the server and the build again
    model: str
    model_bytes: int
    spec: TrialSpec
    workload: Workload
    system_info: str | None = None  # the measured library's system-info line
    # the winner's raw figures, as the YAML sidecar has them (prodconfig.raw_figures: the
    # finalists' re-measurement when there is one, named in "source")
    raw: dict[str, Any] | None = None
    served: ServedFigures | None = None  # llama-server's own figures over HTTP
    knobs: list[Tried] = []  # the server settings tried on the served path, kept or not
    # other processes' share of the CPUs while the sweep measured, up to this write
    machine_load: OtherLoad | None = None
    written_at: str = ""


def files_of(path: Path) -> dict[str, Path]:
    """The llama-server files of a deployment, from the YAML or any of the three."""
    path = Path(path).absolute()
    name = path.name
    for ext in (".args", ".env", ".json"):
        if name.endswith(SUFFIX + ext):
            name = name[: -len(SUFFIX + ext)]
            break
    else:
        if path.suffix in YAML_SUFFIXES:
            name = name[: -len(path.suffix)]
    return {ext: path.with_name(f"{name}{SUFFIX}.{ext}") for ext in ("args", "env", "json")}


def is_llama_server_file(path: Path) -> bool:
    return any(Path(path).name.endswith(f"{SUFFIX}.{ext}") for ext in ("args", "env", "json"))


def find_server(lib_dir: str | None, builds_dir: Path) -> Path | None:
    """The llama-server to run a build's library with: the build's own, else one built without
    CUDA (it loads the library ``LD_LIBRARY_PATH`` names), else None."""
    if lib_dir:
        own = Path(lib_dir).parent / "bin" / SERVER_BINARY
        if own.is_file():
            return own.absolute()
    version = installed_version()
    for build in discover_builds(builds_dir, report=lambda _msg: None):
        if (build.server_bin and build.version == version
                and "-DGGML_CUDA=on" not in build.cmake_args):
            return Path(build.server_bin).absolute()
    return None


def server_args(spec: TrialSpec, workload: Workload, model_path: str, threads: int | None,
                host: str = "127.0.0.1", port: int = 8080,
                extra: Sequence[str] = ()) -> list[str]:
    """llama-server's command line (without the binary) for ``spec``: every setting the trial
    measured, as llama_cpp.server's config would hold it, in llama-server's flags; ``--fit
    off`` so it keeps the placement asked (its default moves layers and context to fit);
    ``extra``: the server's own settings the served phase kept (tuner/deploy/llamaserverknobs.py)."""
    fields = trial_settings(spec, workload, threads)  # refuses what a server cannot run
    model = os.path.abspath(os.path.expanduser(model_path))
    args = ["-m", model, "--alias", Path(model).stem, "--fit", "off", "-np", "1", "--no-ui",
            *PROOF_ARGS]
    for key, value in fields.items():
        args += _flag(key, value, spec)
    if not spec.context.op_offload:
        args.append("--no-op-offload")
    if spec.model.n_cpu_moe:
        args += ["--n-cpu-moe", str(spec.model.n_cpu_moe)]
    args += ffn_override_args(model, spec.model)
    return args + list(extra) + ["--host", host, "--port", str(port)]


def ffn_override_args(model_path: str | os.PathLike[str], ms: Any) -> list[str]:
    """llama-server's (and llama-bench's) ``-ot <pattern>=CPU`` for the ModelSettings ``ms``'s
    part of a layer's FFN on the host (ffn_on_host), resolved against the model; none
    without one."""
    ffn = ffn_on_host_of(model_path, ms)
    return [] if ffn is None else ["-ot", f"{ffn.pattern()}=CPU"]


def _flag(key: str, value: Any, spec: TrialSpec) -> list[str]:
    """One llama_cpp.server model field as llama-server flags; a field without a translation
    stops the write (the deployment would silently differ from the trial)."""
    if key == "n_gpu_layers":
        return ["-ngl", "all" if value < 0 else str(value)]
    if key == "split_mode":
        return ["-sm", split_mode_name(value)]
    if key == "tensor_split":
        return [] if value is None else ["-ts", ",".join(f"{v:g}" for v in value)]
    if key == "type_k":
        return ["-ctk", spec.context.type_k]
    if key == "type_v":
        return ["-ctv", spec.context.type_v]
    if key == "flash_attn":
        return ["-fa", _ON_OFF[bool(value)]]
    if key == "use_mmap":  # llama-server's default load mode maps the file where it can
        return [] if value else ["-lm", "none"]
    simple = {"main_gpu": "-mg", "n_batch": "-b", "n_ubatch": "-ub", "n_ctx": "-c",
              "n_threads": "-t", "n_threads_batch": "-tb"}
    if key in simple:
        return [simple[key], str(value)]
    # llama_cpp.server's fixed fields: llama-server's defaults already match, or its flag.
    fixed: dict[tuple[str, Any], list[str]] = {
        ("offload_kqv", True): [], ("use_mlock", False): [],
        ("logits_all", False): [], ("embedding", False): [], ("verbose", True): [],
        # llama_cpp.server's prompt cache off; llama-server's RAM prompt cache likewise.
        ("cache", False): ["--cache-ram", "0"],
    }
    if (key, value) in fixed:
        return fixed[(key, value)]
    raise TunerError(f"no llama-server flag for the server setting {key}={value!r}")


def server_env(spec: TrialSpec, lib_dir: str, model_path: str) -> dict[str, str]:
    """The deployment's environment: the build's library first on ``LD_LIBRARY_PATH``, and
    what the model-level settings ask (CUDA graphs off, no GPU for a CPU run)."""
    env = service_env(spec, lib_dir, model_path)
    env.pop("LLAMA_CPP_LIB_PATH", None)
    # tuner's launcher's; llama-server takes --n-cpu-moe and -ot
    env.pop(VARS["n_cpu_moe"].name, None)
    env.pop(VARS["ffn_on_host"].name, None)
    return {"LD_LIBRARY_PATH": os.path.abspath(lib_dir), **env}


def process_env(deploy_env: dict[str, str]) -> dict[str, str]:
    """The environment the server process gets: the service basics (never the caller's
    ``LLAMA_ARG_*``, which llama-server reads), the deployment's own variables, and the
    caller's ``LD_LIBRARY_PATH`` after the build's (where the CUDA runtime may be found)."""
    env = childenv.service_env({})
    caller = env.pop("LD_LIBRARY_PATH", "")
    env.update(deploy_env)
    if caller:
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (env.get("LD_LIBRARY_PATH"), caller) if p)
    return env


def with_port(args: list[str], host: str, port: int) -> list[str]:
    """``args`` with ``--host``/``--port`` replaced."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("--host", "--port"):
            skip = True
            continue
        out.append(a)
    return out + ["--host", host, "--port", str(port)]


def model_of(args: list[str]) -> str | None:
    for flag in ("-m", "--model"):
        if flag in args and args.index(flag) + 1 < len(args):
            return args[args.index(flag) + 1]
    return None


class running:
    """llama-server started with ``args`` (host and port set), its output to ``log_path``."""

    def __init__(self, binary: Path, args: list[str], env: dict[str, str], cwd: Path,
                 log_path: Path) -> None:
        self.cmd = [str(binary), *args]
        self.env, self.cwd, self.log_path = env, cwd, log_path

    def __enter__(self) -> subprocess.Popen[bytes]:
        if not Path(self.cmd[0]).is_file():
            raise EnvironmentUnfit(f"no llama-server at {self.cmd[0]}",
                                   hint="build it: tuner build --variant cpu --server-only")
        with open(self.log_path, "wb") as log:
            # It ends with the command, even a SIGKILLed one (tuner/machine/children.py).
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=self.cwd, **popen_kwargs())
        return self.proc

    def __exit__(self, *exc: object) -> None:
        stop(self.proc)


def wait_healthy(proc: subprocess.Popen[bytes], url: str, log_path: Path,
                 timeout_s: float) -> None:
    """Until ``/health`` answers 200 (503 while the model loads)."""
    wait_ready(proc, url, log_path, timeout_s, endpoint="/health", what="llama-server")


def measure(url: str, model_path: str, workload: Workload, prompt_env: dict[str, str],
            requests: int, timeout_s: float) -> ServedFigures:
    """The workload over HTTP, as for llama_cpp.server, with its sampling sent explicitly."""
    return measure_http(url, model_path, workload, prompt_env, requests, timeout_s,
                        sampling=SAMPLING, source="llama-server")


def greedy_prompt(model_path: str, env: dict[str, str]) -> str:
    """The fixed prompt of the greedy check (64 tokens of the model's vocabulary), made once
    for every server it asks."""
    return prompts_for(model_path, 64, 1, env).prompts[0]


def greedy_answer(url: str, prompt: str) -> str:
    """The server's answer to ``prompt`` at temperature 0 (GREEDY_TOKENS tokens, end of text
    ignored): what a setting that must not change outputs is checked against."""
    body = {"prompt": prompt, "n_predict": GREEDY_TOKENS, "ignore_eos": True,
            "cache_prompt": False, "seed": 0, **SAMPLING, "temperature": 0.0}
    try:
        reply = httpx.post(f"{url}/completion", json=body, timeout=600)
    except httpx.HTTPError as e:
        raise EnvironmentUnfit(f"llama-server's greedy answer failed: {e}") from None
    if reply.status_code != 200:
        raise EnvironmentUnfit(f"llama-server's greedy answer: status {reply.status_code}: "
                               f"{reply_line(reply)}")
    try:
        data = reply.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise EnvironmentUnfit(f"llama-server's greedy answer is not a JSON object: "
                               f"{reply_line(reply)}")
    return str(data.get("content", ""))


def serve_and_measure(binary: Path, spec: TrialSpec, workload: Workload, model_path: str,
                      lib_dir: str, threads: int | None, requests: int,
                      timeout_s: float, extra: Sequence[str] = (),
                      greedy: str | None = None) -> tuple[ServedFigures, str, str | None]:
    """Start llama-server on ``spec`` (a free port, ``extra`` flags added), prove its placement
    from its log, time the workload, take its greedy answer to the prompt ``greedy`` (None:
    none), stop it; (figures, the server's log, the greedy answer)."""
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(temp_dir("tuner-llsrv-")))
        port, log_path = free_port(None), tmp / "llama-server.log"
        args = server_args(spec, workload, model_path, threads, port=port, extra=extra)
        proc = stack.enter_context(running(binary, args, process_env(server_env(spec, lib_dir, model_path)),
                                           tmp, log_path))
        url = f"http://127.0.0.1:{port}"
        wait_healthy(proc, url, log_path, timeout_s)
        check_placement(log_path.read_text(errors="replace"), spec)
        fig = measure(url, model_path, workload, service_env(spec, lib_dir, model_path), requests, timeout_s)
        answer = greedy_answer(url, greedy) if greedy is not None else None
        return (fig.model_copy(update={"n_threads": threads, "n_threads_batch": threads}),
                log_path.read_text(errors="replace"), answer)


def write_deployment(out: Path, dep: LlamaServerDeployment) -> dict[str, Path]:
    """The three files beside ``out`` (the production YAML), replaced atomically together
    (the previous ones kept as ``.bak``)."""
    files = files_of(out)
    dep = dep.model_copy(update={"written_at": _now()})
    head = (f"# llama-server arguments, one per line (written by tuner): "
            f"mapfile -t A < <(grep -v '^#' {files['args'].name}); {dep.binary} \"${{A[@]}}\"")
    env_text = render_env_file(dep.env).replace("llama_cpp.server service", "llama-server")
    try:
        files["args"].parent.mkdir(parents=True, exist_ok=True)
        # The one output routine: atomic, .bak kept, links followed, devices refused.
        replace_files([(files["json"], _render_json(dep.model_dump(mode="json")).encode()),
                       (files["env"], env_text.encode()),
                       (files["args"], ("\n".join([head, *dep.args]) + "\n").encode())],
                      "the llama-server deployment", backup=True)
    except OSError as e:
        raise BadInput(f"cannot write the llama-server deployment {files['args']}: "
                       f"{e.strerror or e}") from None
    return files


def read_args(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
