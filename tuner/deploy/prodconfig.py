"""The production config: the YAML file ``python -m llama_cpp.server --config_file FILE`` loads,
built from one trial record, and the sidecar beside it holding what that format cannot (the
kernel build to load, environment variables, provenance, measured figures).

The server stops on any key its settings classes do not define, so the config is validated with
the server's own ``ConfigFileSettings`` before anything is written. Both files are replaced
atomically, the previous ones kept as ``.bak``: a reader (a server restarting, ``tuner verify``)
never sees a half-written file."""

from __future__ import annotations

import json
import os
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

import tuner
from tuner.deploy.configcheck import check_config
from tuner.deploy.serverlaunch import server_module
from tuner.deploy.service import (
    RAW_KIND,
    SERVED_KIND,
    deployment_notes,
    env_file_path,
    rebuild_command,
    render_env_file,
    served_vs_raw,
    service_env,
)
from tuner.errors import BadInput
from tuner.evidence.effective import check_effective, trial_settings
from tuner.machine.output import replace_files, target_of
from tuner.results.breakdown import TokenBreakdown
from tuner.results.records import (
    FinalistReport,
    Interval,
    ServedFigures,
    Stat,
    TrialRecord,
)
from tuner.specs import TrialSpec, Workload

SIDECAR_SUFFIX = ".tuner.json"
SIDECAR_FORMAT = "tuner-sidecar/1"
YAML_SUFFIXES = (".yaml", ".yml")  # the server parses any other file name as JSON


class WrittenConfig(BaseModel):
    """Where ``write_production`` put the config, its sidecar, and the previous config if any."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    path: Path
    sidecar: Path
    backup: Path | None = None
    env_file: Path | None = None


def model_entry(spec: TrialSpec, workload: Workload, model_path: str,
                threads: int | None) -> dict[str, Any]:
    """The server's model entry for ``spec``: the model (absolute path) and every speed-relevant
    setting as the trial measured it (``tuner.evidence.effective``: the server's defaults differ)."""
    model = os.path.abspath(os.path.expanduser(model_path))
    return {"model": model, "model_alias": Path(model).stem,
            **trial_settings(spec, workload, threads)}


def record_threads(record: TrialRecord) -> int | None:
    """The threads the worker ran prompt and generation on, as its measurement recorded them
    (older records: the trial's setting, else every core of the machine it ran on). The
    server's defaults (half the cores for generation) would not be what was measured."""
    cs = record.spec.context
    measured = record.measurement.threads if record.measurement else None
    return cs.n_threads or measured or (record.environment.cpu_count if record.environment
                                        else None)


def server_config(record: TrialRecord, model_path: str, *, host: str = "127.0.0.1",
                  port: int = 8000, threads: int | None = None) -> dict[str, Any]:
    """The content of the server's YAML for the record's settings, one model entry.
    ``threads`` overrides the measured thread count (a served-path sweep chose another)."""
    entry = model_entry(record.spec, record.workload, model_path,
                        threads or record_threads(record))
    return {"host": host, "port": int(port), "models": [entry]}


def sidecar_path(out: Path) -> Path:
    """``configs/production.yaml`` -> ``configs/production.tuner.json``."""
    out = Path(out)
    stem = out.name[: -len(out.suffix)] if out.suffix in YAML_SUFFIXES else out.name
    return out.with_name(stem + SIDECAR_SUFFIX)


def launch_command(out: Path, env: dict[str, str]) -> str:
    """The shell line that starts the server on this config with the build's environment."""
    assigns = [f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    cmd = ["python", "-m", server_module(env), "--config_file", shlex.quote(str(out))]
    return " ".join(assigns + cmd)


def sidecar(record: TrialRecord, out: Path, *, results_dir: Path, build_lib_dir: str | None,
            env: dict[str, str], served: ServedFigures | None = None,
            served_error: str | None = None, finalists: FinalistReport | None = None,
            breakdown: TokenBreakdown | None = None) -> dict[str, Any]:
    """What the server's format cannot hold: build (absolute library folder and the command
    that recreates it on another host), environment, launch line, provenance, figures (raw,
    each named for where it comes from, and served, or why there are none), the per-token
    breakdown when measured, workload, verification and the machine the trial ran on."""
    m = record.measurement
    figures = raw_figures(record, finalists)
    lib_dir = build_lib_dir or (record.environment.build_lib_dir if record.environment else None)
    lib_dir = os.path.abspath(lib_dir) if lib_dir else None
    return {
        "format": SIDECAR_FORMAT,
        "config": str(out),
        "build": {"name": record.spec.model.build, "lib_dir": lib_dir,
                  "rebuild": rebuild_command(lib_dir, record)},
        "env": dict(sorted(env.items())),
        "env_file": str(env_file_path(out)),
        "launch": launch_command(out, env),
        **deployment_notes(out),
        "provenance": {
            "study": record.study,
            "trial_id": record.trial_id,
            "number": record.number,
            "spec_key": record.spec_key,
            "label": record.spec.label(),
            "results_dir": str(Path(results_dir).absolute()),
            "tuner_version": tuner.__version__,
            "python": sys.executable,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        "spec": record.spec.model_dump(mode="json"),
        "figures": figures,
        "served": served_section(served, served_error),
        "served_vs_raw": (served_vs_raw(figures, record.workload.prompt_tokens, served)
                          if m and served else None),
        **({"breakdown": breakdown.model_dump(mode="json")} if breakdown else {}),
        "workload": record.workload.model_dump(mode="json"),
        "verification": record.verification.model_dump(mode="json"),
        "environment": record.environment.model_dump(mode="json") if record.environment else None,
    }


def _stat(s: Stat) -> dict[str, float]:
    return {"median": s.median, "min": s.min, "max": s.max}


def _interval(i: Interval) -> dict[str, float]:
    return {"value": i.value, "low": i.low, "high": i.high, "level": i.level}


def raw_figures(record: TrialRecord, finalists: FinalistReport | None) -> dict[str, Any]:
    """The raw (decode loop) figures of ``record`` for the sidecar, named for their source: the
    finalists' re-measurement of it when there is one (mean over fresh processes of each
    process's median, with its Student-t interval), else its search trial (median and range
    of its repetitions). What only the search trial measured says so in ``sources``."""
    m = record.measurement
    trial = f"search trial #{record.number}"
    f = next((x for x in (finalists.finalists if finalists else [])
              if x.trial == record.number and x.spec_key == record.spec_key), None)
    if f is None:
        reps = f": median of its {len(m.pp_tps.samples)} repetitions" if m else ""
        return {
            "kind": RAW_KIND,
            "source": trial + reps,
            "objective_request_s": record.objective,
            "pp_tps": _stat(m.pp_tps) if m else None,
            "tg_tps": _stat(m.tg_tps) if m and m.tg_tps else None,
            "request_s": _stat(m.request_seconds) if m else None,
            "gpu_peak_mib": m.gpu_peak_mib if m else None,
            "gpu_total_mib": m.gpu_total_mib if m else None,
            "load_s": m.load_seconds if m else None,
            "unstable": m.unstable if m else None,
        }
    return {
        "kind": RAW_KIND,
        "source": (f"finalists: mean of {f.rounds} fresh processes (each the median of its "
                   f"repetitions), {f.request_seconds.level:.0%} Student-t interval"),
        "objective_request_s": f.request_seconds.value,
        "pp_tps": _interval(f.pp_tps),
        "tg_tps": _interval(f.tg_tps) if f.tg_tps else None,
        "request_s": _interval(f.request_seconds),
        "gpu_peak_mib": f.gpu_peak_mib,
        "gpu_total_mib": m.gpu_total_mib if m else None,
        "load_s": m.load_seconds if m else None,
        "unstable": m.unstable if m else None,
        "sources": {"gpu_peak_mib": f"finalists: the most over {f.rounds} processes",
                    "gpu_total_mib": trial, "load_s": trial, "unstable": trial},
    }


def served_section(served: ServedFigures | None, error: str | None) -> dict[str, Any] | None:
    """The sidecar's ``served``: the figures, or why there are none (never a silent null when
    a reason is known)."""
    if served is not None:
        return {"kind": SERVED_KIND, **served.model_dump(mode="json")}
    return {"kind": SERVED_KIND, "error": error} if error else None


def _render_yaml(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def _render_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2) + "\n"


def write_production(record: TrialRecord, out: Path, *, model_path: str, results_dir: Path,
                     build_lib_dir: str | None, env: dict[str, str], host: str = "127.0.0.1",
                     port: int = 8000, served: ServedFigures | None = None,
                     threads: int | None = None,
                     extra: dict[str, Any] | None = None, served_error: str | None = None,
                     finalists: FinalistReport | None = None,
                     breakdown: TokenBreakdown | None = None) -> WrittenConfig:
    """Write the server config for ``record`` at ``out``, its sidecar and the service's
    environment file beside it, keeping the files they replace as ``.bak``. Nothing on disk
    changes unless all render and validate, and the config as the server loads it (in the
    service's environment) runs exactly what was measured. Every path written is absolute,
    so the service works from any directory. ``served``: the served-path figures of this
    config, when measured; ``threads``: a thread count chosen from them (default: the trial's);
    ``extra``: sections the sweep adds to the sidecar (the finalists' intervals and decision);
    ``served_error``: why there are no served figures; ``finalists``: the decision whose
    re-measurement of ``record`` becomes the raw figures; ``breakdown``: where each
    millisecond per token goes."""
    out = Path(out).absolute()
    check_out(out)
    if not Path(model_path).is_file():
        raise BadInput(f"model {model_path} not found; the server could not load it")
    build_lib_dir = os.path.abspath(build_lib_dir) if build_lib_dir else None
    env = {**service_env(record.spec, build_lib_dir, model_path), **env}
    if env.get("LLAMA_CPP_LIB_PATH"):
        env["LLAMA_CPP_LIB_PATH"] = os.path.abspath(env["LLAMA_CPP_LIB_PATH"])

    config = server_config(record, model_path, host=host, port=port, threads=threads)
    text = _render_yaml(config)
    # Validate what the server will read back, not the dict we meant to write, in the
    # environment the service gets, and check it runs what the trial measured.
    effective = check_config(yaml.safe_load(text), build_lib_dir, env)
    check_effective(effective, trial_settings(record.spec, record.workload,
                                              threads or record_threads(record)))
    side = sidecar_path(out)
    side_text = _render_json({**sidecar(record, out, results_dir=results_dir,
                                        build_lib_dir=build_lib_dir, env=env, served=served,
                                        served_error=served_error, finalists=finalists,
                                        breakdown=breakdown),
                              **(extra or {})})
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        written = replace_files([(side, side_text.encode()),
                                 (env_file_path(out), render_env_file(env).encode()),
                                 (out, text.encode())], "the production config", backup=True)
    except OSError as e:
        raise BadInput(f"cannot write the production config {out}: "
                       f"{e.strerror or e}") from None
    return WrittenConfig(path=out, sidecar=side, backup=written[-1][1],
                         env_file=env_file_path(out))


def check_out(out: Path) -> None:
    """The production config path and the files written beside it: regular files (or links
    to them) in a folder, checked before any trial."""
    if out.is_dir():
        raise BadInput(f"production config path {out} is a directory")
    if out.suffix not in YAML_SUFFIXES:
        raise BadInput(f"production config {out} must end in .yaml or .yml "
                       "(llama_cpp.server reads any other name as JSON)")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise BadInput(f"cannot write {out}: {parent} is not a directory")
            break
    for path in (out, sidecar_path(out), env_file_path(out)):
        real = target_of(path, "the production config")
        target_of(real.with_name(real.name + ".bak"), "the production config")
