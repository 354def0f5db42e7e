"""benchmarks/arch_placement.py, which a GPU lease runs right after its setup: on this machine
(no CUDA) it writes the five small files of other architectures, loads each at n_gpu_layers 0
with the real llama-cpp-python and prints the plan beside the log. A script error would cost a
lease; here it must run to its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_arch_placement_runs_to_its_table_on_the_cpu(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "arch_placement.py"),
                           "--out", str(tmp_path), "--n-ctx", "1024", "--n-ubatch", "256"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "arch-placement.json").read_text())
    assert [r["model"] for r in rows] == ["gemma3", "deepseek2-mla", "qwen35", "qwen3moe", "mamba",
                                          "rwkv6", "kimi-linear", "minimax-01"]
    assert {(r["ngl"], r["device"]) for r in rows} == {(0, "host")}  # no CUDA here
    for r in rows:
        log, plan = r["kv+state"]
        assert log == pytest.approx(plan, abs=0.01), r
    assert proc.stdout.strip().splitlines()[-1].startswith("| minimax-01 | 0 | host |")


def test_the_recurrent_compute_table_runs_on_the_cpu() -> None:
    """benchmarks/recurrent_compute.py, the source of the KDA and lightning-attention compute
    figures, on its first shape at one n_ubatch: a real load's figure beside the plan's, within
    the tests' compute tolerance."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "recurrent_compute.py"),
                           "--shapes", "1", "--ubatches", "256"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = proc.stdout.strip().splitlines()[-1]
    assert row.startswith("| kimi-linear | 4 | 64 | 256 | 256 | "), row
    error = float(row.split("|")[-2].strip().rstrip("%"))
    assert -7.0 <= error <= 10.0, row
