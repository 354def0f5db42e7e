"""`tuner doctor --log FILE` through the real CLI on real llama.cpp logs: exit 0 when everything
asked for is on the GPU, 3 when not, 2 when the file is unreadable or not a load log."""

from __future__ import annotations

from pathlib import Path

from tests.cli_run import one_line_error, tuner

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_full_offload_log_exits_0() -> None:
    proc = tuner("doctor", "--log", FIXTURES / "cuda-h100-full-offload.log")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "33/33" in proc.stdout and "CUDA0" in proc.stdout


def test_cpu_build_log_exits_3_with_the_fix() -> None:
    proc = tuner("doctor", "--log", FIXTURES / "cpu-build-load.log")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert 'CMAKE_ARGS="-DGGML_CUDA=on"' in proc.stdout


def test_not_a_load_log_exits_2(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\nworld\n")
    for path in (tmp_path / "notes.txt", tmp_path / "missing.log", tmp_path):
        proc = tuner("doctor", "--log", path)
        assert proc.returncode == 2, (path, proc.stderr)
        one_line_error(proc)
