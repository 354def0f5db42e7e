"""Stored trials that died, as evidence of why (tuner/evidence/deaths.py): the sweep's last lines
and `tuner doctor` name the likely cause when every trial of a build died the same way."""

from __future__ import annotations

from pathlib import Path

from tuner.evidence.deaths import Cause, Death, common_causes
from tuner.results.records import TrialRecord
from tuner.results.studystore import list_studies, records_of

# Trial states that are a death, not a verdict on the setting: infeasible (out of memory, over
# --max-vram) and pruned trials are the setting's.
DEATH_STATES = frozenset({"crashed", "failed", "timeout"})


def death_of(r: TrialRecord) -> Death:
    model = (r.buffers_mib or {}).get("model") or {}
    return Death(build=r.spec.model.build, state=r.state.value, signal=r.signal, error=r.error,
                 log_lines=list(r.log_tail), model_buffers=list(model))


def causes_of(records: list[TrialRecord]) -> list[Cause]:
    """The likely cause for each build none of whose trials completed and all of whose trials
    died the same way."""
    complete = {r.spec.model.build for r in records if r.state.value == "complete"}
    return common_causes([death_of(r) for r in records if r.state.value != "complete"], complete)


def dying_alike(records: list[TrialRecord], at_least: int) -> bool:
    """At least ``at_least`` trials, every one a death, all the same way."""
    if len(records) < at_least or any(r.state.value not in DEATH_STATES for r in records):
        return False
    return len({death_of(r).key() for r in records}) == 1


def study_causes(results_dir: Path) -> list[tuple[str, Cause]]:
    """For each study of the default storage under ``results_dir`` with no usable trial, the
    likely causes of its deaths (none when there is no storage there)."""
    db = Path(results_dir) / "optuna.db"
    if not db.is_file() or db.stat().st_size == 0:
        return []
    url = f"sqlite:///{db.resolve()}"
    found = []
    for name in list_studies(url):
        records = records_of(url, name)
        if not any(r.usable for r in records):
            found += [(name, c) for c in causes_of(records)]
    return found
