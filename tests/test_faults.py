"""Fault injection: real workers made to abort, segfault, exit, kill themselves, hang, die the
way a CUDA out-of-memory dies (a FAKE: no GPU here, see tuner/worker/faults.py) or raise, in the
middle of a real sweep run by the real CLI. The sweep must survive every case, store every trial
once with the right state, and go on with a fresh worker. Each fault is deterministic (it fires
at the same point of the same trial every time), so each case runs once; the tally (runs,
parent crashes, lost trials) is printed at the end of the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import fault_tally
from tests.cli_run import tuner
from tests.spaces import write_space
from tuner.results.studystore import default_storage, list_studies, records_of

GRID = 4  # n_batch 16, 32, 48, 64; the fault hits n_batch=32, the second trial

CASES = {
    # fault: (state of the faulted trial, signal or None)
    "abort@measure": ("crashed", "SIGABRT"),
    "segfault@measure": ("crashed", "SIGSEGV"),
    "exit@measure": ("crashed", None),
    "sigkill@measure": ("crashed", "SIGKILL"),
    "hang@measure": ("timeout", None),
    "oom@measure": ("infeasible", "SIGABRT"),
    "raise@measure": ("failed", None),
}


def run_sweep(model: Path, root: Path, faults: str, timeout: float = 120) -> tuple:
    space = write_space(root / "space.yaml", n_batch=[16, 32, 48, 64], n_ubatch=[16])
    # A trial of the tiny model takes under a second alone; 20 s leaves room for a loaded machine
    # (8 s was once exceeded there) and is reached by the hang only.
    proc = tuner("sweep", "--model", model, "--device", "cpu", "--space", space,
                 "--prompt-tokens", 64, "--gen-tokens", 4, "--n-ctx", 128, "--repetitions", 1,
                 "--warmup", 0, "--trial-timeout", 20, "--results", root / "results",
                 "--out", root / "production.yaml", "--finalist-rounds", 0,
                 env={"TUNER_FAULTS": faults},
                 timeout=timeout)
    url = default_storage(root / "results")
    studies = list_studies(url)
    records = records_of(url, studies[0]) if studies else []
    return proc, records


@pytest.mark.parametrize("fault", list(CASES))
def test_worker_fault_never_takes_the_sweep_down(fault: str, tiny_model: Path,
                                                 tmp_path: Path) -> None:
    state, sig = CASES[fault]
    root = tmp_path / "run"
    proc, records = run_sweep(tiny_model, root, f"{fault}:n_batch=32")
    parent_crashed = proc.returncode != 0 or "Traceback" in proc.stderr
    keys = [r.spec_key for r in records]
    fault_tally.record(fault, parent_crashed, GRID - len(set(keys)))
    fault_tally.record_duplicates(fault, len(keys) - len(set(keys)))
    assert not parent_crashed, proc.stderr[-3000:]
    assert len(records) == GRID and len(set(keys)) == GRID
    by_batch = {r.spec.context.n_batch: r for r in records}
    hit = by_batch[32]
    assert hit.state.value == state, (hit.state, hit.error)
    assert hit.signal == sig
    assert hit.error and not hit.verification.verified
    if state in ("crashed", "infeasible"):
        assert hit.log_tail, "the log tail of the dead worker is kept"
    for nb in (16, 48, 64):  # before and after the fault: measured and verified
        assert by_batch[nb].usable, (nb, by_batch[nb].error)
    assert (root / "production.yaml").exists()


def test_load_crash_is_a_trial_outcome(tiny_model: Path, tmp_path: Path) -> None:
    proc, records = run_sweep(tiny_model, tmp_path / "run", "segfault@load")
    crashed_parent = "Traceback" in proc.stderr
    fault_tally.record("segfault@load", crashed_parent, GRID - len(records))
    assert not crashed_parent
    assert proc.returncode == 3, proc.stderr  # nothing verified: no production config
    assert "no production config written" in proc.stdout
    assert len(records) == GRID
    assert all(r.state.value == "crashed" and r.signal == "SIGSEGV" for r in records)
    assert all("during model load" in r.error for r in records)
    assert not (tmp_path / "run" / "production.yaml").exists()


def test_model_llama_cpp_refuses_is_infeasible_not_a_crash(tiny_model: Path,
                                                             tmp_path: Path) -> None:
    """A real refusal, no fake: a well-formed GGUF (it passes the header check) whose
    architecture llama.cpp does not know. The load fails in the worker; every trial of that
    worker's settings is stored as infeasible with llama.cpp's reason in the log tail."""
    data = bytearray(tiny_model.read_bytes())
    key = data.index(b"general.architecture")
    at = data.index(b"llama", key + len(b"general.architecture"))
    data[at:at + 5] = b"llamX"
    odd = tmp_path / "odd-arch.gguf"
    odd.write_bytes(bytes(data))
    proc, records = run_sweep(odd, tmp_path / "run", "")
    fault_tally.record("unknown architecture", "Traceback" in proc.stderr, GRID - len(records))
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    assert len(records) == GRID
    for r in records:
        assert r.state.value == "infeasible" and r.signal is None, (r.state, r.error)
        assert "could not load the model" in r.error
        assert any("unknown model architecture" in line for line in r.log_tail), r.log_tail
