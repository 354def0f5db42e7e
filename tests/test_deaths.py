"""A sweep whose every trial dies the same way says why (tuner/evidence/deaths.py), stops early,
and `tuner doctor` names the same cause from the stored evidence. The deaths are real worker
deaths made by the FAKE faults of tests/workerhooks/faults.py (an AMX CPU cannot be had here)."""

from __future__ import annotations

from pathlib import Path

from tests.cli_run import tuner
from tests.spaces import write_space
from tests.workerhooks.faults import env as fault_env
from tuner.evidence.deaths import Death, amx_lines, cause_of, common_causes
from tuner.results.studystore import default_storage, list_studies, records_of

BATCHES = [8, 12, 16, 20, 24, 28, 32, 40]


def _sweep(model: Path, root: Path, faults: str) -> tuple:
    space = write_space(root / "space.yaml", n_batch=BATCHES, n_ubatch=[8])
    proc = tuner("sweep", "--model", model, "--device", "cpu", "--space", space,
                 "--prompt-tokens", 64, "--gen-tokens", 4, "--n-ctx", 128, "--repetitions", 1,
                 "--warmup", 0, "--trial-timeout", 30, "--results", root / "results",
                 "--out", root / "production.yaml", "--sampler", "grid",
                 env=fault_env(faults), timeout=300)
    url = default_storage(root / "results")
    studies = list_studies(url)
    return proc, records_of(url, studies[0]) if studies else []


def test_every_trial_dying_in_the_amx_backend_is_explained(tiny_model: Path,
                                                           tmp_path: Path) -> None:
    proc, records = _sweep(tiny_model, tmp_path, "amx@measure")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    # Stopped after the same death on 5 settings, not after all 8.
    assert len(records) == 5 and {r.state.value for r in records} == {"crashed"}
    assert {r.signal for r in records} == {"SIGSEGV"}
    out = proc.stdout.replace("\n", " ")
    assert "the first 5 trials all died the same way" in out
    assert "no production config written" in out
    assert "likely cause (5 trial(s) of build installed)" in out
    assert "llama.cpp issue 20824" in out and "AMX buffer" in out
    assert "fix: rebuild llama-cpp-python without llama.cpp's AMX code path" in out
    assert not (tmp_path / "production.yaml").exists()
    # tuner doctor reads the same evidence from the stored study.
    doc = tuner("doctor", "--results", tmp_path / "results", "--builds", tmp_path / "none")
    lines = [ln for ln in doc.stdout.splitlines() if ln.startswith("study ")]
    assert lines and "likely cause (5 trial(s) of build installed)" in lines[0], doc.stdout
    assert any("fix: rebuild llama-cpp-python" in ln for ln in lines), doc.stdout


def test_a_plain_segfault_on_every_trial_names_the_signal_and_the_log(tiny_model: Path,
                                                                       tmp_path: Path) -> None:
    proc, records = _sweep(tiny_model, tmp_path, "segfault@measure")
    assert proc.returncode == 3
    assert len(records) == 5
    out = proc.stdout.replace("\n", " ")
    assert "every trial died the same way (SIGSEGV)" in out
    assert "AMX" not in out  # no AMX buffer in the evidence: no AMX claim


def test_deaths_that_differ_or_a_build_that_completed_name_no_cause() -> None:
    segv = Death("installed", "crashed", "SIGSEGV", log_lines=["a"])
    abrt = Death("installed", "crashed", "SIGABRT", log_lines=["a"])
    assert common_causes([segv, abrt], set()) == []
    assert common_causes([segv, segv], {"installed"}) == []
    [cause] = common_causes([segv, segv], set())
    assert cause.count == 2


def test_each_cause_from_its_evidence() -> None:
    amx = cause_of(Death("b", "crashed", "SIGSEGV", model_buffers=["CPU_Mapped", "AMX"]))
    assert "20824" in amx.what and amx.fix and "AMX" in amx.fix
    ill = cause_of(Death("b", "crashed", "SIGILL"))
    assert "illegal instruction" in ill.what and ill.fix and "--no-cache-dir" in ill.fix
    cuda = cause_of(Death("b", "crashed", "SIGABRT", log_lines=[
        "CUDA error: no kernel image is available for execution on the device"]))
    assert cuda.what.startswith("a CUDA error: no kernel image") and "--cuda-arch" in (cuda.fix or "")
    oom = cause_of(Death("b", "infeasible", "SIGABRT", log_lines=[
        "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 81920.00 MiB on device 0: "
        "cudaMalloc failed: out of memory"]))
    assert oom.what.startswith("out of memory")
    # cuBLAS's handle not allocated in a decode (run 35's trial #7, H200): memory, not a
    # CUDA fault to report
    cublas = cause_of(Death("b", "infeasible", "SIGABRT", log_lines=[
        "CUDA error: the resource allocation failed",
        "  cublasCreate_v2(&cublas_handles[device][curr_stream_no])"]))
    assert cublas.what.startswith("out of memory")
    killed = cause_of(Death("b", "crashed", "SIGKILL"))
    assert "OOM killer" in killed.what
    other = cause_of(Death("b", "crashed", "SIGBUS", log_lines=["last words"]))
    assert "SIGBUS" in other.what and "last words" in other.what


def test_doctor_log_warns_of_an_amx_buffer(tmp_path: Path) -> None:
    text = (Path(__file__).parent / "fixtures" / "cpu-build-load.log").read_text()
    assert amx_lines(text) == []  # a CPU load without AMX: no warning
    saved = tmp_path / "load.log"
    saved.write_text(text + "load_tensors:          AMX model buffer size =    95.34 MiB\n")
    proc = tuner("doctor", "--log", saved, "--n-gpu-layers", "0")
    assert any(ln.startswith("Warning: the model's CPU weights went into llama.cpp's AMX")
               for ln in proc.stdout.splitlines()), proc.stdout
    assert any(ln.startswith("Fix: rebuild llama-cpp-python") for ln in proc.stdout.splitlines())
