"""Checks run before the first trial, so that nothing found at the end of a long sweep could have
been found at its start: output paths that cannot be written, a server config the server would
refuse (or a build whose library cannot load), and a study whose stored records belong to
another model, device or workload."""

from __future__ import annotations

from tuner.deploy.configcheck import check_config
from tuner.deploy.prodconfig import server_config
from tuner.deploy.service import service_env
from tuner.errors import BadInput
from tuner.results.records import TrialRecord, TrialState
from tuner.specs import Device, TrialSpec, Workload


def preflight_config(spec: TrialSpec, workload: Workload, model_path: str,
                     lib_dirs: dict[str, str | None]) -> None:
    """Validate, for each build, the server config a trial of ``spec``'s shape would give, the
    way write_production will check the real one after the trials (the same checking child,
    kept for the sweep, in the same environment: the service's): a config the server refuses,
    or a build library that does not load, stops the sweep now."""
    for build, lib_dir in lib_dirs.items():
        probe = TrialRecord(
            study="preflight", trial_id="preflight", number=0, spec_key=spec.key(),
            spec=spec.model_copy(update={"model": spec.model.model_copy(update={"build": build})}),
            workload=workload, state=TrialState.COMPLETE, started_at="", finished_at="")
        check_config(server_config(probe, model_path), lib_dir, service_env(probe.spec, lib_dir, model_path))


def check_records_identity(records: list[TrialRecord], study: str, sha256: str, device: Device,
                           workload: Workload) -> None:
    """Every stored record must come from this model (SHA-256), device and workload shape:
    the records themselves are the study's identity, whatever the study's stored identity says."""
    shape = (workload.prompt_tokens, workload.gen_tokens, workload.n_ctx)
    for r in records:
        env_sha = r.environment.model_sha256 if r.environment else None
        r_shape = (r.workload.prompt_tokens, r.workload.gen_tokens, r.workload.n_ctx)
        if env_sha not in (None, sha256):
            what = "another model (SHA-256 differs)"
        elif r.spec.model.device != device:
            what = f"device {r.spec.model.device}"
        elif r_shape != shape:
            what = "another workload (prompt/gen tokens, n_ctx)"
        else:
            continue
        raise BadInput(f"study {study!r} holds trials of {what} (trial #{r.number}); pick "
                       "another --study to keep both")
