"""Trial workers on real llama-cpp-python: spawned (not forked), one per build and model
settings and reused across context settings, answering on their pipe with the measurement."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.cli_run import REPO
from tests.workerhooks import env as hook_env, faults, spawnproof
from tuner.specs import ContextSettings, ModelSettings, TrialSpec, Workload
from tuner.worker.runner import Runner

CPU = ModelSettings(device="cpu", build="installed")
WL = Workload(prompt_tokens=48, gen_tokens=4, repetitions=3)


def spec(n_batch: int) -> TrialSpec:
    # One thread: two threads on two busy cores wait on each other at every llama.cpp barrier.
    return TrialSpec(model=CPU, context=ContextSettings(n_batch=n_batch, n_ubatch=16,
                                                        n_threads=1))


def test_workers_are_spawned_not_forked(tiny_model: Path, tmp_path: Path,
                                        monkeypatch) -> None:
    # A forked child would share this process's marker and run no startup hook (no record); a
    # spawned one starts a new interpreter, whose hook records the marker it sees: none.
    record = tmp_path / "spawned.jsonl"
    monkeypatch.setattr(spawnproof, "MARKER", "set in the parent")
    for name, value in hook_env(**{spawnproof.VAR: str(record)}).items():
        monkeypatch.setenv(name, value)
    with Runner(tiny_model, tmp_path, {"installed": None}) as runner:
        out = runner.run(spec(16), WL)
        assert out.state == "complete", out.error
        assert type(runner._worker.proc).__name__ == "SpawnProcess"
        assert out.hello is not None
        assert spawnproof.records(record) == [{"pid": out.hello.pid, "marker": None}]


def test_one_worker_serves_context_changes_and_measures(tiny_model: Path,
                                                        tmp_path: Path) -> None:
    # The tiny model: this is about the worker's life, and SmolLM2 made it a 27 CPU-second test.
    with Runner(tiny_model, tmp_path, {"installed": None}) as runner:
        first = runner.run(spec(16), WL)
        second = runner.run(spec(48), WL)
        assert first.state == second.state == "complete", (first.error, second.error)
        assert first.hello.pid == second.hello.pid, "the model stayed loaded"
        for out in (first, second):
            assert len(out.measured.pp_seconds) == WL.repetitions
            assert len(out.measured.tg_seconds) == WL.repetitions
            assert all(t > 0 for t in out.measured.pp_seconds + out.measured.tg_seconds)
        assert "n_batch               = 48" in second.measured.log
        other = runner.run(TrialSpec(model=CPU.model_copy(update={"split_mode": 0}),
                                     context=ContextSettings(n_batch=16, n_ubatch=16,
                                                             n_threads=1)), WL)
        assert other.state == "complete"
        assert other.hello.pid != first.hello.pid, "new model settings, new worker"
    assert "llama_model_loader" in first.load_log


def test_a_kept_probe_becomes_the_first_worker_where_it_fits(tiny_model: Path,
                                                           tmp_path: Path) -> None:
    """probe_hello(keep=True): the probe (no model yet) is adopted by the first trial of its
    build whose settings ask the same environment; its log (the library's system info) moves
    into the trial worker's file and its temporary folder goes. Settings that ask another
    environment (CUDA graphs off: GGML_CUDA_DISABLE_GRAPHS) get a fresh process instead, and
    no spare outlives the first worker."""
    with Runner(tiny_model, tmp_path / "logs", {"installed": None}) as runner:
        hello = runner.probe_hello(CPU, keep=True)
        probe_dir = Path(runner._spares["installed"].tmp.name)
        out = runner.run(spec(16), WL)
        assert out.state == "complete", out.error
        assert out.hello.pid == hello.pid, "the probe became the trial worker"
        assert not probe_dir.exists() and not runner._spares
        log = Path(runner._worker.job.log_path)
        assert log.parent == tmp_path / "logs"
        assert hello.system_info.strip() in log.read_text()  # the probe's lines moved too
        assert "llama_model_loader" in log.read_text()

    with Runner(tiny_model, tmp_path / "logs2", {"installed": None}) as runner:
        hello = runner.probe_hello(CPU, keep=True)
        spare = runner._spares["installed"].worker
        no_graphs = TrialSpec(model=CPU.model_copy(update={"cuda_graphs": False}),
                              context=spec(16).context)
        out = runner.run(no_graphs, WL)
        assert out.state == "complete", out.error
        assert out.hello.pid != hello.pid, "another environment: a fresh worker"
        assert not spare.proc.is_alive() and not runner._spares


def test_the_parent_never_imports_llama_cpp(tiny_model: Path, tmp_path: Path) -> None:
    """A whole sweep in one process, which then reports whether llama_cpp was ever imported."""
    code = f"""
import sys
from pathlib import Path
from tuner.specs import Workload
from tuner.sweep.options import SweepOptions
from tuner.sweep.run import run_sweep
r = run_sweep(SweepOptions(model=Path({str(tiny_model)!r}), device="cpu",
              workload=Workload(prompt_tokens=16, gen_tokens=2, repetitions=1), trials=2,
              results_dir=Path({str(tmp_path / 'r')!r}), out=Path({str(tmp_path / 'p.yaml')!r})))
assert len(r.ran) == 2 and r.written is not None
print("llama_cpp imported:", "llama_cpp" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "llama_cpp imported: False" in proc.stdout


def test_a_crash_ends_only_its_worker_and_the_next_config_gets_a_fresh_one(
        tiny_model: Path, tmp_path: Path, monkeypatch) -> None:
    # A finalists' round (tuner/sweep/final.py) measures up to 3 configs in one worker: when
    # llama.cpp dies on the second, the third still gets measured, in a new process.
    for name, value in faults.env("segfault@measure:n_batch=32").items():
        monkeypatch.setenv(name, value)
    with Runner(tiny_model, tmp_path, {"installed": None}, trials_per_worker=3,
                sentinel=False) as runner:
        first = runner.run(spec(16), WL)
        crashed = runner.run(spec(32), WL)
        third = runner.run(spec(64), WL)
    assert first.state == "complete" and third.state == "complete", (first.error, third.error)
    assert crashed.state == "crashed" and crashed.signal == "SIGSEGV"
    assert first.worker_id != third.worker_id
