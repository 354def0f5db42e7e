"""A kernel build the sweep makes for itself compiles in the background, at idle CPU priority,
while the search measures the builds there are (tuner/builds/autobuild.py,
tuner/sweep/run.py): the trials measured beside the compile are marked, the search waits for
the build instead of ending, the new build's settings join the plan, and the figures that decide
the winner are taken after the compile (the confirmation counts only fresh workers for a trial
measured beside it).

No CUDA toolkit here: the compile is a FAKE builder that lays out a real build folder around a
copy of the installed (CPU) llama.cpp library, so every trial, probe and fresh worker is real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tuner.builds import catalog
from tuner.builds.autobuild import BackgroundBuilds, idle_priority
from tuner.builds.catalog import BuildRecord
from tuner.builds.selection import MissingBuild
from tuner.search.finalists import FinalistOptions
from tuner.search.space import Space
from tuner.specs import TrialSpec, Workload
from tuner.sweep import run as sweep
from tuner.sweep.options import SweepOptions

CPU = MissingBuild("cpu", "")


def test_idle_priority_reaches_the_processes_a_build_thread_starts() -> None:
    seen: dict[str, object] = {}

    def thread() -> None:
        seen["set"] = idle_priority()
        seen["thread"] = os.sched_getscheduler(0)
        seen["child"] = subprocess.run(
            [sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"],
            capture_output=True, text=True, check=True).stdout.strip()

    t = threading.Thread(target=thread)
    t.start()
    t.join()
    assert seen["set"] == "idle"
    assert seen["thread"] == os.SCHED_IDLE
    assert seen["child"] == str(os.SCHED_IDLE)
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the caller's own thread is untouched


def test_background_builds_report_when_done(tmp_path: Path) -> None:
    release = threading.Event()

    def fake_builder(variant: str, **_: object) -> None:
        """A FAKE build_variant that compiles nothing: it waits until released."""
        assert release.wait(30)

    bg = BackgroundBuilds([CPU], tmp_path, builder=fake_builder)
    assert not bg.done()
    release.set()
    out = bg.wait()
    assert bg.done() and out.built == ["cpu"] and out.priority == "idle"


def test_cancel_ends_a_build_between_its_commands(tmp_path: Path) -> None:
    started = threading.Event()

    def fake_builder(variant: str, *, log, **_: object) -> None:  # type: ignore[no-untyped-def]
        """A FAKE build_variant that logs a step every 10 ms, as cmake and ninja do, forever."""
        started.set()
        while True:
            log("step")
            threading.Event().wait(0.01)

    bg = BackgroundBuilds([CPU], tmp_path, builder=fake_builder)
    assert started.wait(30)
    bg.cancel()
    assert bg.done()
    out = bg.wait()
    assert out.built == [] and "stopped: the sweep ended before the build did" in out.failed[0]


def test_sweeps_that_start_together_build_a_variant_once(tmp_path: Path) -> None:
    calls: list[str] = []
    first_in = threading.Event()
    release = threading.Event()

    def fake_builder(variant: str, *, builds_dir: Path, **_: object) -> None:
        """A FAKE build_variant that leaves a build record after it is released."""
        calls.append(variant)
        first_in.set()
        assert release.wait(30)
        (builds_dir / variant).mkdir(parents=True)
        (builds_dir / variant / "build.json").write_text("{}")

    one = BackgroundBuilds([CPU], tmp_path, builder=fake_builder)
    assert first_in.wait(30)
    two = BackgroundBuilds([CPU], tmp_path, builder=fake_builder)  # waits on the first's lock
    release.set()
    assert one.wait().built == ["cpu"] and two.wait().built == ["cpu"]
    assert calls == ["cpu"]


class _Events:
    def __init__(self, first_done: threading.Event) -> None:
        self.first_done = first_done
        self.notes: list[str] = []
        self.plans: list[tuple[int, int]] = []

    def planned(self, total: int, pending: int, retried: int) -> None:
        self.plans.append((total, pending))
    def started(self, spec: TrialSpec) -> None: ...

    def finished(self, record: object, best: object) -> None:
        self.first_done.set()

    def note(self, text: str) -> None:
        self.notes.append(text)


def test_the_search_runs_beside_the_build_and_the_decision_after_it(
        tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first_done = threading.Event()
    priority: list[int] = []
    lib = catalog._installed_lib_dir()
    assert lib is not None

    def fake_builder(variant: str, *, builds_dir: Path, **_: object) -> None:
        """A FAKE build_variant: after the search's first trial, a build folder holding a copy
        of the installed library, as `tuner build` lays one out."""
        priority.append(os.sched_getscheduler(0))
        # The FAKE compile itself need not crawl: at idle priority on a test machine whose
        # cores the other tests keep busy, it waited up to a minute for a free cycle.
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        assert first_done.wait(120)
        folder = builds_dir / variant
        shutil.copytree(lib, folder / "lib")
        info = subprocess.run([sys.executable, "-c", catalog.PROBE_CODE], capture_output=True,
                              text=True, check=True,
                              env={**os.environ, "LLAMA_CPP_LIB_PATH": str(folder / "lib")}).stdout
        (folder / "build.json").write_text(BuildRecord(
            variant=variant, version=catalog.installed_version(), cmake_args=[], cuda_arch=None,
            source="FAKE", source_sha256="0" * 64, started="", finished="", duration_s=0.0,
            system_info=info, flags_summary="", bench=None).model_dump_json())

    calls: list[int] = []

    def to_make(probes: dict) -> list[MissingBuild]:
        calls.append(len(probes))
        return [CPU] if "cpu" not in probes else []

    def one_setting_per_build(device: str, builds: list[str], gpu_layers: tuple[int, ...] = (),
                              attention: bool = True, experts: tuple[int, ...] = (),
                              parts: tuple[str, ...] = ()) -> Space:
        return Space(builds=builds, n_gpu_layers=[0], n_batch=[64], n_ubatch=[64],
                     flash_attn=[False], kv_cache=["f16/f16"], n_threads=[2])

    monkeypatch.setattr(sweep, "builds_to_make", to_make)
    monkeypatch.setattr(sweep, "default_space", one_setting_per_build)
    events = _Events(first_done)
    result = sweep.run_sweep(SweepOptions(
        model=tiny_model, device="cpu", builds_dir=tmp_path / "builds",
        workload=Workload(prompt_tokens=16, gen_tokens=2, repetitions=2),
        results_dir=tmp_path / "results", out=tmp_path / "production.yaml",
        finalists=FinalistOptions(rounds=2, max_rounds=2, confirm_rounds=2),
        served_requests=0), events, builder=fake_builder)

    assert priority == [os.SCHED_IDLE]
    by_build = {r.spec.model.build: r for r in result.ran}
    assert set(by_build) == {"installed", "cpu"}, events.notes
    assert by_build["installed"].alongside_build == ["cpu"]  # measured while it compiled
    assert by_build["cpu"].alongside_build is None
    assert result.stop_reason == "every planned setting measured"
    assert events.plans == [(1, 1), (2, 1)]  # the plan grew by the new build's setting
    assert any("waiting for cpu to compile" in n for n in events.notes), events.notes
    assert any(n.startswith("built cpu in ") and "idle CPU priority" in n for n in events.notes)
    assert "build (beside the search)" in result.seconds
    # The decision: the trial measured beside the compile counts only its fresh workers.
    assert result.finalists is not None
    procs = {c.trial: c.processes for c in result.finalists.confirmed}
    assert procs == {by_build["installed"].number: 2, by_build["cpu"].number: 3}
    assert result.written is not None


def test_a_build_that_cannot_be_made_leaves_the_search_on_the_builds_there_are(
        tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner.errors import EnvironmentUnfit

    def fake_builder(variant: str, **_: object) -> None:
        """A FAKE build_variant on a machine without network: the source cannot be fetched."""
        raise EnvironmentUnfit("could not download the llama-cpp-python sdist (no network)")

    def one_setting_per_build(device: str, builds: list[str], gpu_layers: tuple[int, ...] = (),
                              attention: bool = True, experts: tuple[int, ...] = (),
                              parts: tuple[str, ...] = ()) -> Space:
        return Space(builds=builds, n_gpu_layers=[0], n_batch=[64], n_ubatch=[64],
                     flash_attn=[False], kv_cache=["f16/f16"], n_threads=[2])

    monkeypatch.setattr(sweep, "builds_to_make", lambda probes: [CPU])
    monkeypatch.setattr(sweep, "default_space", one_setting_per_build)
    events = _Events(threading.Event())
    result = sweep.run_sweep(SweepOptions(
        model=tiny_model, device="cpu", builds_dir=tmp_path / "builds",
        workload=Workload(prompt_tokens=16, gen_tokens=2, repetitions=1),
        results_dir=tmp_path / "results", out=tmp_path / "production.yaml",
        finalists=FinalistOptions(rounds=0), served_requests=0), events,
        builder=fake_builder)
    assert [r.spec.model.build for r in result.ran] == ["installed"]
    assert events.plans == [(1, 1)]  # the plan did not grow
    (failed,) = [n for n in events.notes if n.startswith("build cpu not made (")]
    assert "could not download" in failed and "`tuner build --variant cpu" in failed
    assert result.written is not None  # the sweep went on and configured the build it has
