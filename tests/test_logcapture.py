"""The worker's log capture (tuner/worker/logcapture.py): every line kept in memory and in the
file as written (an aborting worker leaves its last words on disk), sections by mark, bulky
sections forgotten from memory but kept in the file, and the parent's tail of a dead worker's
file. The callback into llama.cpp itself runs in every worker test (tests/test_runner.py)."""

from __future__ import annotations

from pathlib import Path

from tuner.worker.logcapture import LogCapture, read_tail


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
