"""The worker's log capture (tuner/worker/logcapture.py): every line kept in memory and in the
file as written (an aborting worker leaves its last words on disk), sections by mark, bulky
sections forgotten from memory but kept in the file, and the parent's tail of a dead worker's
file. The callback into llama.cpp itself runs in every worker test (tests/test_runner.py)."""

from __future__ import annotations

from pathlib import Path

from tuner.worker.logcapture import LogCapture, last_words, read_tail


def test_lines_reach_memory_and_the_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    log = LogCapture(str(path))
    log.write("load_tensors: layer 0 assigned to device CUDA0\n")
    assert path.read_text() == log.text()  # unbuffered: on disk before anything else happens
    log.write("offloaded 1/1 layers to GPU\n")
    assert log.tail(1) == ["offloaded 1/1 layers to GPU"]


def test_sections_by_mark_and_a_bulky_one_cut_from_memory(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    log = LogCapture(str(path))
    log.write("model loaded\n")
    log.mark()
    log.write("## SPLIT #0: CPU\n")
    log.write("## SPLIT #1: CUDA0\n")
    assert log.since_mark() == "## SPLIT #0: CPU\n## SPLIT #1: CUDA0\n"
    assert log.cut_since_mark() == "## SPLIT #0: CPU\n## SPLIT #1: CUDA0\n"
    assert log.text() == "model loaded\n"  # memory no longer holds the report
    assert "## SPLIT #1: CUDA0" in path.read_text()  # the file still does
    log.mark()
    log.write("trial context\n")
    assert log.since_mark() == "trial context\n"


def test_the_parent_reads_the_tail_of_a_dead_workers_file(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    path.write_text("".join(f"line {i}\n" for i in range(100)) + "\n   \nGGML_ASSERT failed\n")
    assert read_tail(str(path), 2) == ["line 99", "GGML_ASSERT failed"]  # blank lines skipped
    # Only the end of a big file is read.
    # (42 bytes start inside "line 97": that piece is dropped, not shown as a line.)
    assert read_tail(str(path), 5, max_bytes=42) == ["line 98", "line 99", "GGML_ASSERT failed"]
    assert read_tail(str(tmp_path / "missing.log")) == []


def test_a_dead_workers_last_words_stop_at_ggmls_abort_message(tmp_path: Path) -> None:
    """ggml_abort prints its message, then a backtrace (gdb's form here, as ggml prints it where
    gdb is installed): the cause above the message is kept, the backtrace left out. Without a
    message (a segfault) the plain tail is kept."""
    path = tmp_path / "w.log.stdio"
    frames = [f"#{i}  0x00007f3c2e5a{i:04x} in ggml_graph_compute () from "
              "/tmp/site/llama_cpp/lib/libggml-base.so" for i in range(60)]
    path.write_text("\n".join([
        "llama_context: graph splits = 2",
        "ggml_gallocr_reserve_n: reallocating CUDA0 buffer from size 120.00 MiB to 640.00 MiB",
        "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 640.00 MiB on device 0: "
        "cudaMalloc failed: out of memory",
        "/tmp/llama.cpp/ggml/src/ggml-alloc.c:819: GGML_ASSERT(buffer) failed",
        "[New LWP 4121]", "[Thread debugging using libthread_db enabled]", *frames,
        "[Inferior 1 (process 4120) detached]"]) + "\n")
    words = last_words(str(path), 3)
    assert words[-1].endswith("GGML_ASSERT(buffer) failed")
    assert "out of memory" in words[-2]
    plain = tmp_path / "segv.stdio"
    plain.write_text("llama_context: graph splits = 2\nsome last line\n")
    assert last_words(str(plain), 5) == ["llama_context: graph splits = 2", "some last line"]
