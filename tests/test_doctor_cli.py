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


def test_scheduler_report_in_a_gzipped_log_is_read() -> None:
    proc = tuner("doctor", "--log", FIXTURES / "cuda-h100-sched-debug.log.gz")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ("Operations: 7 scheduler reports; the last: 342 nodes in 2 splits "
            "(341 on CUDA0, 1 on CPU); input embedding lookup on the host") in proc.stdout


def test_an_operation_on_the_cpu_exits_3_with_the_op_named(tmp_path: Path) -> None:
    import gzip

    from tests.opreport_edits import move_to_cpu_split

    text = gzip.decompress((FIXTURES / "cuda-h100-sched-debug.log.gz").read_bytes()).decode()
    edited = tmp_path / "moved.log"
    edited.write_text(move_to_cpu_split(text, "node_98"))
    proc = tuner("doctor", "--log", edited)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "  - FLASH_ATTN (node_98, layer 2) runs on CPU" in proc.stdout
    assert "FA_QUANTS" in proc.stdout  # the fix names what the build has kernels for


def test_a_log_without_a_report_says_how_to_get_one() -> None:
    proc = tuner("doctor", "--log", FIXTURES / "cuda-h100-full-offload.log")
    assert proc.returncode == 0
    assert "Operations: no scheduler report in the log (set GGML_SCHED_DEBUG=2" in proc.stdout


def test_a_broken_gzip_file_is_bad_input(tmp_path: Path) -> None:
    broken = tmp_path / "cut.log.gz"
    broken.write_bytes((FIXTURES / "cuda-h100-sched-debug.log.gz").read_bytes()[:5000])
    proc = tuner("doctor", "--log", broken)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "not a readable gzip file" in one_line_error(proc)
