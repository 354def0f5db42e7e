"""Fault injection: real workers made to abort, segfault, exit, kill themselves, hang, die the
way a CUDA out-of-memory dies (a FAKE: no GPU here, see tests/workerhooks/faults.py) or raise, in the
middle of a real sweep run by the real CLI. The sweep must survive every case, store every trial
once with the right state, and go on with a fresh worker. Each fault is deterministic (it fires
at the same point of the same trial every time), so each case runs once, and the eight faults of
a trial run one after another in one sweep (each on its own setting, between two healthy ones):
a sweep that survives all eight in a row survives each. The tally (runs, parent crashes, lost
trials) is printed at the end of the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import fault_tally
from tests.cli_run import REPO, tuner
from tests.spaces import write_space
from tests.workerhooks.faults import Fault, env as fault_env, parse
from tuner.results.studystore import default_storage, list_studies, records_of

GRID = 4  # n_batch 16, 32, 48, 64 in the load-fault cases

CASES = {
    # fault: (state of the faulted trial, signal or None)
    "abort@measure": ("crashed", "SIGABRT"),
    "segfault@measure": ("crashed", "SIGSEGV"),
    "exit@measure": ("crashed", None),
    "sigkill@measure": ("crashed", "SIGKILL"),
    "hang@measure": ("timeout", None),
    "oom@measure": ("infeasible", "SIGABRT"),
    # a decode's out of memory, its cause above ggml's backtrace in stderr: not a crash (a tail
    # of stderr's last lines held only the backtrace; run 34 on an H100 lost two trials as
    # "killed by SIGABRT during the trial", whose cause its records did not keep)
    "oom-decode@measure": ("infeasible", "SIGABRT"),
    # cuBLAS's handle not allocated in a decode (run 35's trial #7, stored as crashed there)
    "cublas-alloc@measure": ("infeasible", "SIGABRT"),
    "raise@measure": ("failed", None),
}


def run_sweep(model: Path, root: Path, faults: str, batches: list[int] | None = None,
              *extra: object, timeout: float = 240) -> tuple:
    space = write_space(root / "space.yaml", n_batch=batches or [16, 32, 48, 64],
                        n_ubatch=[4 if batches else 16])
    # A trial of the tiny model takes under a second alone; 20 s leaves room for a loaded machine
    # (8 s was once exceeded there) and is reached by the hang only.
    proc = tuner("sweep", "--model", model, "--device", "cpu", "--space", space,
                 "--prompt-tokens", 64, "--gen-tokens", 4, "--n-ctx", 128, "--repetitions", 1,
                 "--warmup", 0, "--trial-timeout", 20, "--results", root / "results",
                 "--out", root / "production.yaml", "--finalist-rounds", 0, *extra,
                 env=fault_env(faults),
                 timeout=timeout)
    url = default_storage(root / "results")
    studies = list_studies(url)
    records = records_of(url, studies[0]) if studies else []
    return proc, records


# Each measure fault on its own n_batch, between a healthy first and a healthy last setting
# (n_batch above the 64 prompt tokens would be left out of the space).
FAULTED = {fault: 12 + 4 * i for i, fault in enumerate(CASES)}  # 12, 16, ... 40
HEALTHY = (8, 12 + 4 * len(CASES))  # 8 and 44


def test_worker_faults_never_take_the_sweep_down(tiny_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "run"
    faults = ",".join(f"{fault}:n_batch={nb}" for fault, nb in FAULTED.items())
    batches = sorted([*HEALTHY, *FAULTED.values()])
    proc, records = run_sweep(tiny_model, root, faults, batches, "--sampler", "grid")
    parent_crashed = proc.returncode != 0 or "Traceback" in proc.stderr
    keys = [r.spec_key for r in records]
    by_batch = {r.spec.context.n_batch: r for r in records}
    stored = [r.spec.context.n_batch for r in records]
    for fault, nb in FAULTED.items():
        fault_tally.record(fault, parent_crashed, 0 if nb in by_batch else 1)
        fault_tally.record_duplicates(fault, max(0, stored.count(nb) - 1))
    assert not parent_crashed, proc.stderr[-3000:]
    assert len(records) == len(batches) and set(by_batch) == set(batches), keys
    for fault, nb in FAULTED.items():
        state, sig = CASES[fault]
        hit = by_batch[nb]
        assert (hit.state.value, hit.signal) == (state, sig), (fault, hit.state, hit.error)
        assert hit.error and not hit.verification.verified, fault
        if state in ("crashed", "infeasible"):
            assert hit.log_tail, f"the log tail of the worker {fault} killed is kept"
    # The faulted trials ran between the healthy ones: the last needed a fresh worker.
    assert [by_batch[nb].number for nb in batches] == sorted(r.number for r in records)
    for nb in HEALTHY:
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


def test_a_mistyped_fault_fails_the_test_not_a_worker() -> None:
    """The hooks' variable is checked in the test process (a worker's startup would only print
    the error and run unhurt)."""
    for bad in ("boom@load", "hang@nowhere", "hang@measure:n_batch"):
        with pytest.raises(ValueError, match="KIND@STAGE"):
            fault_env(bad)
    assert parse("hang@measure:n_batch=8, exit@load") == [
        Fault("hang", "measure", "n_batch", "8"), Fault("exit", "load")]


def test_the_product_carries_no_test_hook() -> None:
    """FAKE failures and the spawn proof live in tests/workerhooks, injected from the tests'
    PYTHONPATH: no module of tuner/ names them."""
    names = ("TUNER_TEST_", "TUNER_FAULTS", "fork_canary", "FORK_CANARY", "maybe_inject")
    hits = [p.name for p in (REPO / "tuner").rglob("*.py")
            if any(n in p.read_text() for n in names)]
    assert hits == []
