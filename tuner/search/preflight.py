"""Checks run before the first trial, so that nothing found at the end of a long sweep could have
been found at its start: output paths that cannot be written, a server config the server would
refuse (or a build whose library cannot load), and a study whose stored records belong to
another model, device or workload."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from tuner.deploy.prodconfig import server_config, validate
from tuner.errors import BadInput, EnvironmentUnfit
from tuner.results.records import TrialRecord, TrialState
from tuner.specs import Device, TrialSpec, Workload


def _existing_ancestor(path: Path) -> Path:
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path("/")


def check_writable_folder(path: Path, what: str) -> None:
    """``path``'s folder (or the nearest one that exists, where the rest would be made) must
    take a new file: tried for real, with a temporary file removed at once."""
    folder = _existing_ancestor(Path(path))
    if not folder.is_dir():
        raise BadInput(f"cannot write {what} {path}: {folder} is not a directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tuner-write-check-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise EnvironmentUnfit(f"cannot write {what} {path}: the disk is full",
                                   hint="free space, then run the same command") from None
        raise BadInput(f"cannot write {what} {path}: {folder} is not writable "
                       f"({e.strerror or e})") from None


def check_output_path(path: Path) -> None:
    """An export file (``tuner report -o FILE``): not a folder, in a folder that exists and can
    be written."""
    p = Path(path)
    if p.is_dir():
        raise BadInput(f"output {p} is a directory; give a file name")
    parent = p.absolute().parent
    if not parent.exists():
        raise BadInput(f"output folder {parent} does not exist")
    if not parent.is_dir():
        raise BadInput(f"cannot write {p}: {parent} is not a directory")
    check_writable_folder(p, "output")


def preflight_config(spec: TrialSpec, workload: Workload, model_path: str,
                     lib_dirs: dict[str, str | None]) -> None:
    """Validate, for each build, the server config a trial of ``spec``'s shape would give, the
    way write_production will validate the real one after the trials (same child, same clean
    environment): a config the server refuses, or a build library that does not load, stops
    the sweep now."""
    for build, lib_dir in lib_dirs.items():
        probe = TrialRecord(
            study="preflight", trial_id="preflight", number=0, spec_key=spec.key(),
            spec=spec.model_copy(update={"model": spec.model.model_copy(update={"build": build})}),
            workload=workload, state=TrialState.COMPLETE, started_at="", finished_at="")
        validate(server_config(probe, model_path), lib_dir)


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
