"""The builds a sweep makes for itself (tuner/builds/autobuild.py): side by side with the cores
shared, and a build that cannot be made named with the one command that makes it, never a
stopped sweep. This machine has no CUDA toolkit, so the real builder's refusal is the real path
here; the side-by-side case uses a FAKE builder (a compile of a CUDA variant cannot run here)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from tuner.builds.autobuild import build_missing, jobs_each
from tuner.builds.selection import MissingBuild
from tuner.errors import EnvironmentUnfit

CUBLAS = MissingBuild("force-cublas", "90")
MMQ = MissingBuild("force-mmq", "61")


def test_cores_are_shared_between_builds() -> None:
    assert jobs_each(2, cpus=16) == 8
    assert jobs_each(3, cpus=16) == 5
    assert jobs_each(4, cpus=2) == 1
    assert jobs_each(0, cpus=8) == 8


def test_builds_run_side_by_side_and_a_failure_is_named(tmp_path: Path) -> None:
    both_started = threading.Barrier(2, timeout=30)  # passes only if the two overlap
    calls: list[tuple[str, str, int, bool]] = []

    def fake_builder(variant: str, *, source: object, builds_dir: Path, cuda_arch: str,
                     jobs: int, log, bench: bool) -> None:
        """A FAKE build_variant: records the call; force-mmq fails as an offline machine's."""
        calls.append((variant, cuda_arch, jobs, bench))
        both_started.wait()
        log("compiling")
        if variant == "force-mmq":
            raise EnvironmentUnfit("could not download the llama-cpp-python sdist (no network)")

    lines: list[str] = []
    out = build_missing([CUBLAS, MMQ], tmp_path, log=lines.append, builder=fake_builder)
    assert out.built == ["force-cublas"]
    assert out.jobs == jobs_each(2)
    # The libraries only: a sweep never runs llama-bench.
    assert sorted(calls) == [("force-cublas", "90", out.jobs, False),
                             ("force-mmq", "61", out.jobs, False)]
    (failed,) = out.failed
    assert "could not download" in failed
    assert "`tuner build --variant force-mmq --cuda-arch 61`" in failed
    assert sorted(lines) == ["[force-cublas] compiling", "[force-mmq] compiling"]


def test_nothing_missing_builds_nothing(tmp_path: Path) -> None:
    out = build_missing([], tmp_path, builder=lambda *a, **k: pytest.fail("built"))
    assert out.built == [] and out.failed == []


def test_real_builder_into_a_folder_that_cannot_hold_a_build(tmp_path: Path) -> None:
    """The real build_variant, stopped before any download or compile: its builds folder is a
    file. The sweep gets a named command, no traceback, and nothing that looks built."""
    not_a_folder = tmp_path / "builds"
    not_a_folder.write_text("a file where the builds folder should be\n")
    out = build_missing([CUBLAS], not_a_folder)
    assert out.built == []
    (failed,) = out.failed
    assert failed.startswith("build force-cublas not made (")
    assert "`tuner build --variant force-cublas --cuda-arch 90`" in failed
    assert not_a_folder.read_text() == "a file where the builds folder should be\n"


def test_stopping_the_builds_ends_every_process_a_build_command_started(tmp_path: Path) -> None:
    """An interrupted sweep calls stop_running (BackgroundBuilds.cancel): the real _run's
    command and the processes under it (as ninja's compilers are) end, and the build fails
    with one line instead of compiling on unseen."""
    from tuner.builds import buildmake
    from tuner.errors import TunerError

    pid_file = tmp_path / "grandchild.pid"
    failed: list[str] = []

    def build() -> None:
        try:  # a command whose child outlives it unless the whole group is ended
            buildmake._run(["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"],
                           lambda _l: None, "cmake build", None)
        except TunerError as exc:
            failed.append(exc.message)

    t = threading.Thread(target=build)
    t.start()
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text().strip() and buildmake.RUNNING):
        assert time.monotonic() < deadline, "the build command never started"
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    buildmake.stop_running()
    t.join(30)
    assert not t.is_alive()
    assert failed and failed[0].startswith("cmake build failed (exit -15)")
    assert not buildmake.RUNNING
    deadline = time.monotonic() + 10
    while _alive(grandchild):
        assert time.monotonic() < deadline, "the command's child outlived the stop"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"  # a zombie has ended
