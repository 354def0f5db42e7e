"""doctor: the report and exit code for real load logs, the fix each failure points at, and a
readable BadInput for every file that cannot be a load log."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tuner.builds.cpuflags import CUDA_INSTALL_HINT
from tuner.errors import BadInput
from tuner.evidence.doctor import diagnose, diagnose_file

FIXTURES = Path(__file__).parent / "fixtures"
CUDA_LOG = (FIXTURES / "cuda-h100-full-offload.log").read_text()


def _fixes(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("Fix: ")]


def _all_layers_on_cpu(text: str) -> str:
    text = re.sub(r"assigned to device CUDA0", "assigned to device CPU", text)
    text = re.sub(r"dev = CUDA0", "dev = CPU", text)
    return text.replace("offloaded 33/33", "offloaded 0/33").replace(
        "     CUDA0 KV buffer size", "       CPU KV buffer size")


def test_full_offload_log_exits_0() -> None:
    d = diagnose_file(FIXTURES / "cuda-h100-full-offload.log")
    assert d.exit_code == 0
    assert "Layers: 33/33 offloaded to GPU (CUDA0: 33)" in d.lines
    assert "GPUs llama.cpp found: 0: NVIDIA H100 80GB HBM3" in d.lines
    assert any(line.startswith("KV cache: CUDA0 (32 layers); buffers CUDA0 2048.00 MiB")
               for line in d.lines)
    assert "Model buffers: CPU_Mapped 70.31 MiB, CUDA0 3577.56 MiB" in d.lines
    assert any("token embeddings" in line for line in d.lines)  # CPU_Mapped explained
    assert _fixes(d.lines) == []


def test_cpu_build_log_exits_3_with_install_hint() -> None:
    d = diagnose_file(str(FIXTURES / "cpu-build-load.log"))
    assert d.exit_code == 3
    assert any(line.startswith("Build: CPU only, no CUDA backend") for line in d.lines)
    assert _fixes(d.lines) == [f"Fix: {CUDA_INSTALL_HINT}"]


def test_n_gpu_layers_left_at_zero() -> None:
    d = diagnose(_all_layers_on_cpu(CUDA_LOG))
    assert d.exit_code == 3
    assert _fixes(d.lines) == ["Fix: set n_gpu_layers=-1 to offload every layer"]


def test_partial_offload_points_at_vram() -> None:
    text = re.sub(r"layer +([0-9]|1[0-2]) assigned to device CUDA0",
                  r"layer \1 assigned to device CPU", CUDA_LOG)
    text = re.sub(r"layer +([0-9]|1[0-2]): dev = CUDA0", r"layer \1: dev = CPU", text)
    text = text.replace("offloaded 33/33", "offloaded 20/33")
    d = diagnose(text)
    assert d.exit_code == 3
    assert any("only 20 of 33 layers went to the GPU" in line for line in d.lines)
    fix = _fixes(d.lines)
    assert len(fix) == 1 and "shorter n_ctx" in fix[0] and "q8_0" in fix[0]
    assert diagnose(text, n_gpu_layers=20).exit_code == 0  # when 20 is what was asked for


def test_kv_cache_on_host_points_at_offload_kqv() -> None:
    text = re.sub(r"dev = CUDA0", "dev = CPU", CUDA_LOG)
    d = diagnose(text)
    assert d.exit_code == 3
    assert _fixes(d.lines) == ["Fix: set offload_kqv=True (llama-cpp-python's default)"]


def test_cuda_build_without_a_gpu() -> None:
    text = re.sub(r"^(ggml_cuda_init|  Device 0).*\n", "", CUDA_LOG, flags=re.M)
    text = re.sub(r"load_tensors: offload.*\n", "", _all_layers_on_cpu(text))
    text = "ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is detected\n" + text
    d = diagnose(text)
    assert d.exit_code == 3
    assert any(line.startswith("  ggml_cuda_init: failed") for line in d.lines)
    assert _fixes(d.lines) == [
        "Fix: check nvidia-smi, the NVIDIA driver, and CUDA_VISIBLE_DEVICES"]


def test_load_only_log_asks_for_the_context_too() -> None:
    d = diagnose(CUDA_LOG[:CUDA_LOG.index("llama_context: constructing")])
    assert d.exit_code == 3
    assert "  - no KV cache placement in the log" in d.lines
    assert _fixes(d.lines) == ["Fix: capture the log through context creation too"]


def test_undecodable_bytes_inside_a_real_log(tmp_path: Path) -> None:
    raw = CUDA_LOG.encode().replace(b"models/llama2", b"models/\xff\xfellama2", 1)
    path = tmp_path / "load.log"
    path.write_bytes(raw)
    assert diagnose_file(path).exit_code == 0


def _bad(path: Path, match: str) -> BadInput:
    with pytest.raises(BadInput, match=match) as info:
        diagnose_file(path)
    assert info.value.exit_code == 2 and "\n" not in info.value.message
    return info.value


def test_missing_file(tmp_path: Path) -> None:
    _bad(tmp_path / "nope.log", "log file not found")


def test_directory(tmp_path: Path) -> None:
    _bad(tmp_path, "is a directory")


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.log"
    empty.write_text("")
    _bad(empty, "is empty")
    blank = tmp_path / "blank.log"
    blank.write_text("\n  \n")
    _bad(blank, "is empty")


def test_binary_garbage(tmp_path: Path) -> None:
    with_nul = tmp_path / "a.bin"
    with_nul.write_bytes(bytes(range(256)) * 64)
    _bad(with_nul, "binary")
    no_nul = tmp_path / "b.bin"
    no_nul.write_bytes(bytes(range(128, 256)) * 64)
    _bad(no_nul, "binary")


def test_gguf_model_instead_of_a_log(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 64)
    err = _bad(model, "GGUF model, not a log")
    assert err.hint and "verbose=True" in err.hint


def test_text_that_is_not_a_load_log(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list\nmilk\neggs\n")
    _bad(notes, "no model load")
    _bad(FIXTURES / "cuda-sysinfo-default.txt", "no model load")  # system info, no load


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path: Path) -> None:
    locked = tmp_path / "locked.log"
    locked.write_text(CUDA_LOG)
    locked.chmod(0)
    try:
        _bad(locked, "cannot read")
    finally:
        locked.chmod(0o644)


def test_diagnose_rejects_non_load_text() -> None:
    with pytest.raises(BadInput, match="no model load"):
        diagnose("hello\n")
