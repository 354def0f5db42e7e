"""Stored results for report tests: one small real CPU sweep (run once per session by the
``cpu_sweep`` fixture in conftest.py), a copy of it with a finalist report, drift records and a
throttled trial derived from its records (TEST DATA, named as such below), and the real H200
study of docs/benchmarks/ laid out as an older version's results folder (trials.jsonl)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.cli_run import REPO, tuner
from tests.records_factory import store_records
from tuner.results.readings import ClockReading, GpuClocks
from tuner.results.records import (
    ConfirmedFigures,
    FinalistFigures,
    FinalistReport,
    Interval,
    Stat,
    TrialRecord,
    WorkerDrift,
)
from tuner.results.store import read_jsonl
from tuner.results.studystore import default_storage, list_studies, open_study, records_of

SPACE = "n_batch: [512]\nn_ubatch: [32, 512]\nflash_attn: [false, true]\n" \
        "kv_cache: ['f16/f16', 'q8_0/q8_0']\nn_threads: [1]\n"
H200_TRIALS = REPO / "docs" / "benchmarks" / "h200-trials.jsonl"


def run_cpu_sweep(root: Path, model: Path) -> dict:
    """`tuner sweep --device cpu --trials 4` on ``model`` into ``root/results``: the baseline,
    then n_ubatch 32 with flash attention off, on, and on with a q8_0 cache."""
    space = root / "space.yaml"
    space.write_text(SPACE)
    proc = tuner("sweep", "--model", model, "--device", "cpu", "--space", space, "--trials", 4,
                 "--prompt-tokens", 128, "--gen-tokens", 16, "--n-ctx", 256,
                 "--repetitions", 2, "--results", root / "results",
                 "--out", root / "configs" / "production.yaml", cwd=root)
    studies = list_studies(default_storage(root / "results"))
    return {"root": root, "proc": proc, "results": root / "results", "model": model,
            "study": studies[0] if studies else None}


def _iv(stat: Stat) -> Interval:
    return Interval(value=stat.median, low=stat.min, high=stat.max)


def finalists_from(records: list[TrialRecord], study: str) -> FinalistReport:
    """TEST DATA: a finalist report built from the sweep's records (the three fastest verified
    trials, their repetition ranges standing in for re-measured 95% intervals), deciding a tie
    for the runner-up the way the finalist stage would state it."""
    top = sorted((r for r in records if r.usable), key=lambda r: r.objective)[:3]
    lead = top[0].measurement
    figs = []
    for r in top:
        m = r.measurement
        req = _iv(m.request_seconds)
        figs.append(FinalistFigures(
            trial=r.number, spec_key=r.spec_key, label=r.spec.label(), rounds=3, samples=9,
            request_seconds=req, pp_tps=_iv(m.pp_tps),
            tg_tps=_iv(m.tg_tps) if m.tg_tps else None,
            ratio_to_leader=Interval(value=req.value / lead.request_seconds.median,
                                     low=req.low / lead.request_seconds.max,
                                     high=req.high / lead.request_seconds.min),
            gpu_peak_mib=m.gpu_peak_mib, build=r.spec.model.build, verified=True))
    winner = top[1] if len(top) > 1 else top[0]
    # The search's five best over three processes: each trial's repetitions stand in for the
    # per-process medians of a real confirmation.
    confirmed = [ConfirmedFigures(
        trial=r.number, spec_key=r.spec_key, label=r.spec.label(), processes=3,
        request_seconds=r.measurement.request_seconds, pp_tps=r.measurement.pp_tps,
        tg_tps=r.measurement.tg_tps, verified=True)
        for r in sorted((r for r in records if r.usable), key=lambda r: r.objective)[:5]]
    return FinalistReport(
        confirmed=confirmed,
        study=study, finalists=figs, winner_trial=winner.number, leader_trial=top[0].number,
        tie=True, reason=f"TEST DATA: #{top[0].number} not faster beyond the interval; "
                         f"#{winner.number} uses less memory",
        measured_at="2026-01-01T00:00:00+00:00")


def drift_from(records: list[TrialRecord], study: str, trial: int) -> WorkerDrift:
    """TEST DATA: a significant drift of the worker that measured ``trial`` (matched by trial
    number: these records predate worker ids)."""
    r = next(x for x in records if x.number == trial)
    pp = r.measurement.pp_tps.median
    return WorkerDrift(study=study, worker_id="w-test-1", build=r.spec.model.build,
                       first_trial=trial, trials=[trial], pp_tps_start=pp,
                       pp_tps_end=pp * 0.8, tg_tps_start=None, tg_tps_end=None, pp_drift=-0.2,
                       tg_drift=None, noise=0.05, significant=True,
                       measured_at="2026-01-01T00:00:00+00:00")


def throttled(record: TrialRecord) -> TrialRecord:
    """TEST DATA: the record as if NVML had reported a hardware slowdown at the end of its
    timed work (a FAKE clock reading: this machine has no GPU)."""
    m = record.measurement.model_copy(update={
        "throttled": True,
        "clocks": GpuClocks(start=ClockReading(sm_clock_mhz=1980),
                            end=ClockReading(sm_clock_mhz=1410,
                                             throttle_reasons=["HW_SLOWDOWN"]))})
    return record.model_copy(update={"measurement": m, "trial_id": record.trial_id + "-thr"})


def enriched_copy(sweep: dict, dest: Path) -> dict:
    """The sweep's study copied to the storage of ``dest/results`` with a finalist report, a
    drift record and its last trial re-stored as throttled (every addition TEST DATA, see
    above)."""
    study = sweep["study"]
    records = records_of(default_storage(sweep["results"]), study)
    (dest / "results").mkdir(parents=True, exist_ok=True)
    url = default_storage(dest / "results")
    copied = []
    worst = max((r for r in records if r.measurement), key=lambda r: r.objective)
    drifted = sorted((r for r in records if r.usable), key=lambda r: r.objective)[2].number
    for r in records:
        if r.number == drifted:  # TEST DATA: measured by the worker the drift record names
            r = r.model_copy(update={"worker_id": "w-test-1"})
        copied.append(throttled(r) if r.number == worst.number else r)
    store_records(url, study, copied)
    fin = finalists_from(records, study)
    store = open_study(url, study)
    assert store is not None
    store.save_finalists(fin)
    store.save_drift(drift_from(records, study, drifted))
    return {"results": dest / "results", "study": study, "finalists": fin,
            "drifted": drifted, "throttled": worst.number}


def h200_results(dest: Path) -> dict:
    """docs/benchmarks/h200-trials.jsonl (a real sweep on an H200) imported into the storage of
    the results folder ``dest``, its JSONL also kept as ``dest/<study>.jsonl`` (an export)."""
    first = json.loads(H200_TRIALS.read_text().splitlines()[0])
    study = first["study"]
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(H200_TRIALS, dest / f"{study}.jsonl")
    store_records(default_storage(dest), study, read_jsonl(H200_TRIALS))
    return {"results": dest, "study": study, "jsonl": dest / f"{study}.jsonl"}


def exported(results: Path, study: str, dest: Path) -> Path:
    """The study exported through the real CLI (`tuner report --format jsonl -o`), as a file
    another machine's report would compare against."""
    proc = tuner("report", "--results", results, "--study", study, "--format", "jsonl",
                 "-o", dest)
    assert proc.returncode == 0, proc.stderr
    return dest
