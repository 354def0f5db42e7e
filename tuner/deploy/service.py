"""What a deployment of the production config needs besides the config: the service's
environment file, the command that recreates the kernel build on another host, how to roll
back, and the names that tell raw figures from served ones. ``prodconfig`` writes them beside
the config; ``tuner verify`` reads them back."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from tuner.builds.cpuflags import pip_install_command
from tuner.machine.envvars import VARS
from tuner.results.records import ServedFigures, TrialRecord
from tuner.settings import environment
from tuner.specs import TrialSpec
from tuner.worker.llamaparams import ffn_on_host_of

ENV_SUFFIX = ".env"
RAW_KIND = ("raw: llama.cpp decode loop in a worker (prompt in n_batch chunks, one decode per "
            "generated token, no sampling), comparable with llama-bench")
SERVED_KIND = ("served: llama_cpp.server's completion path (Llama.__call__, stream=True, "
               "sampling and detokenising per token), as a client sees it")


def env_file_path(out: Path) -> Path:
    """``configs/production.yaml`` -> ``configs/production.env``."""
    out = Path(out)
    stem = out.name[: -len(out.suffix)] if out.suffix in (".yaml", ".yml") else out.name
    return out.with_name(stem + ENV_SUFFIX)


def render_env_file(env: dict[str, str]) -> str:
    """KEY=value lines that both systemd's ``EnvironmentFile=`` and a shell
    (``set -a; . production.env; set +a``) read the same way."""
    lines = ["# Environment of the llama_cpp.server service (written by tuner).",
             "# systemd: EnvironmentFile=<this file>; shell: set -a; . <this file>; set +a"]
    lines += [f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    return "\n".join(lines) + "\n"


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of an environment file written by ``render_env_file``."""
    env: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        parts = shlex.split(value) if value else [""]
        env[key.strip()] = parts[0] if parts else ""
    return env


def rebuild_command(lib_dir: str | None, record: TrialRecord) -> str:
    """The command that recreates the library the trial loaded, on another host: ``tuner build``
    for a build it made (its build.json says variant and CUDA architectures), else a reinstall
    of llama-cpp-python of the same version."""
    if lib_dir:
        meta = Path(lib_dir).parent / "build.json"
        try:
            data: dict[str, Any] = json.loads(meta.read_text())
        except (OSError, ValueError):
            data = {}
        if data.get("variant"):
            cmd = f"tuner build --variant {data['variant']}"
            if data.get("cuda_arch"):
                cmd += f" --cuda-arch {data['cuda_arch']}"
            return cmd
    env = record.environment
    version = env.llama_cpp_python if env else "0.3.36"
    cuda = bool(env and env.system_info and "CUDA" in env.system_info)
    return pip_install_command(version, cuda)


def deployment_notes(out: Path) -> dict[str, str]:
    """How to check the deployed service and how to go back to the previous config."""
    out = Path(out)
    side = out.with_name(env_file_path(out).name.removesuffix(ENV_SUFFIX) + ".tuner.json")
    env = env_file_path(out)
    restore = " && ".join(f"cp {shlex.quote(str(p))}.bak {shlex.quote(str(p))}"
                          for p in (out, side, env))
    return {
        "verify": f"tuner verify {shlex.quote(str(out))}",
        "rollback": f"{restore} && tuner verify {shlex.quote(str(out))}",
    }


def raw_prediction(figures: dict[str, Any], prompt_tokens: int) -> tuple[float | None,
                                                                          float | None]:
    """(time to first token, generation tok/s) a sidecar's raw figures predict: the prompt at
    the raw prompt speed, generation at the raw decode speed (each figure's central value: the
    finalists' mean, else the search trial's median)."""
    pp, tg = _central(figures.get("pp_tps")), _central(figures.get("tg_tps"))
    return (prompt_tokens / pp if pp and prompt_tokens else None), tg


def _central(fig: Any) -> float | None:
    if not isinstance(fig, dict):
        return None
    value = fig.get("value")
    value = fig.get("median") if value is None else value
    return float(value) if isinstance(value, (int, float)) and value else None


def served_vs_raw(figures: dict[str, Any], prompt_tokens: int,
                  served: ServedFigures) -> dict[str, float | None]:
    """The gap a user sizing a deployment from the sweep would miss: served over raw, as
    relative changes (negative: the service is slower), with both numbers."""
    # As tuner verify predicts it from the sidecar.
    raw_ttft, raw_gen = raw_prediction(figures, prompt_tokens)
    gen = served.gen_tps.median if served.gen_tps else None
    return {
        "raw_ttft_s": raw_ttft, "served_ttft_s": served.ttft_s.median,
        "ttft_change": (served.ttft_s.median - raw_ttft) / raw_ttft if raw_ttft else None,
        "raw_gen_tps": raw_gen, "served_gen_tps": gen,
        "gen_change": (gen - raw_gen) / raw_gen if raw_gen and gen else None,
    }


def service_env(spec: TrialSpec, lib_dir: str | None,
                model_path: str | os.PathLike[str]) -> dict[str, str]:
    """The environment a service of ``spec`` needs: the build's library (absolute), CUDA graphs
    off when the trial ran without them, the first layers whose experts stay on the host, the
    layer whose FFN matrices do (resolved against the layers of the model at ``model_path``),
    no GPU for a deliberate CPU run."""
    env: dict[str, str] = {}
    if lib_dir:
        env["LLAMA_CPP_LIB_PATH"] = os.path.abspath(lib_dir)
    env.update(environment(spec.model))  # what the model-level settings ask
    if spec.model.n_cpu_moe:  # what tuner's server launcher applies (deploy/serverlaunch.py)
        env[VARS["n_cpu_moe"].name] = str(spec.model.n_cpu_moe)
    if ffn := ffn_on_host_of(model_path, spec.model):
        env[VARS["ffn_on_host"].name] = ffn.text()
    if spec.model.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env
