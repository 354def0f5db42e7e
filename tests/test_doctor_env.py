"""`tuner doctor` without --log: this machine checked through the real CLI (a CPU-only
llama-cpp-python here, so exit 3 with the install fix), builds that cannot be loaded or are
broken reported with their fix, and the parent never importing llama_cpp. The verdict for a
CUDA machine is checked on made-up probe results (TEST DATA: no GPU here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.cli_run import REPO, tuner
from tests.test_builds import write_record
from tuner.builds.catalog import _installed_lib_dir
from tuner.worker.envdoctor import BuildCheck, _problems, _report, server_loop_line


def test_cpu_only_machine_exits_3_with_the_fix(tmp_path: Path) -> None:
    proc = tuner("doctor", "--builds", tmp_path / "no-builds", cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    out = proc.stdout
    assert "llama-cpp-python: 0.3.36 installed" in out
    assert "spawn start method: available" in out
    # uvloop is one of tuner's dependencies: the server's loop here
    assert "llama_cpp.server event loop: uvloop " in out and "(uvicorn's auto choice)" in out
    assert f"build installed ({_installed_lib_dir()}): cpu; GPU offload NOT supported" in out
    assert "CUDA devices seen by llama.cpp: none" in out
    assert "Problem: no build can offload to a GPU" in out
    assert 'Fix: install a CUDA build: CMAKE_ARGS="-DGGML_CUDA=on"' in out
    assert "tuner build --variant default --cuda-arch N" in out
    assert out.rstrip().endswith("Verdict: NOT fit for a CUDA sweep (tuner sweep --device cpu "
                                 "still works).")


def test_broken_and_unloadable_builds_are_problems_with_fixes(tmp_path: Path) -> None:
    builds = tmp_path / "builds"
    # A build whose library is not a library: its probe worker dies, the doctor does not.
    lib = write_record(builds, "force-mmq", variant="force-mmq") / "lib"
    lib.mkdir()
    (lib / "libllama.so").write_bytes(b"not an ELF file")
    # A build copied from the installed library, but recorded for another version.
    old = write_record(builds, "default", variant="default", version="0.2.0") / "lib"
    shutil.copytree(_installed_lib_dir(), old, dirs_exist_ok=True)
    (builds / "broken").mkdir()
    (builds / "broken" / "build.json").write_text("{not json")
    proc = tuner("doctor", "--builds", builds, cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    out = proc.stdout
    assert "build force-mmq (" in out and "cannot be loaded: probe worker exited" in out
    assert "Problem: build force-mmq cannot be loaded" in out
    assert "Fix: rebuild it: tuner build --variant force-mmq" in out
    assert "Problem: build default is of another llama-cpp-python version" in out
    assert f"Problem: skipping the broken build record {builds / 'broken' / 'build.json'}" in out
    assert "Fix: rebuild it with tuner build --variant broken" in out


def test_the_parent_never_imports_llama_cpp(tmp_path: Path) -> None:
    code = ("import sys; from pathlib import Path; from tuner.worker.envdoctor import check_environment;"
            "r = check_environment(Path('no-builds')); "
            "print(r.exit_code, 'llama_cpp' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                          timeout=300)
    assert proc.stdout.split() == ["3", "False"], proc.stderr


def test_verdict_for_a_cuda_machine() -> None:
    # TEST DATA: probe results shaped like an H100 host's; no GPU ran here.
    h100 = dict(name="default", lib_dir="/b/default/lib", flags="default, archs 900", cuda=True,
                offload=True, nvml_gpus=["0: NVIDIA H100 80GB HBM3"], driver="550.54.15")
    fit = BuildCheck(**h100, llama_devices=["NVIDIA H100 80GB HBM3"])
    report = _report([], _problems([fit]), [fit])
    assert report.exit_code == 0 and report.problems == []
    assert report.lines[-1] == "Verdict: fit for a CUDA sweep (builds that can: default)."
    unseen = BuildCheck(**h100)  # NVML sees the GPU, llama.cpp's CUDA backend does not
    problems = _problems([unseen])
    assert _report([], problems, [unseen]).exit_code == 3
    assert problems[0][0].startswith("NVML sees a GPU but llama.cpp's CUDA backend found none")
    assert "update the NVIDIA driver" in problems[0][1]


def test_the_server_loop_line_without_uvloop_says_how_to_get_it() -> None:
    line = server_loop_line(find=lambda name: None)  # TEST DATA: an environment without it
    assert line.startswith("llama_cpp.server event loop: asyncio (uvloop is not installed; "
                           "pip install uvloop")
