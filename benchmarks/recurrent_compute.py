"""The compute-buffer stages of gated delta (KDA, Kimi-Linear) and lightning-attention
(MiniMax-01) layers (tuner/models/memplan.py compute_bytes) against real CPU loads: small
files of several head counts, head widths and n_embd (tuner/models/archgen.py), loaded by
llama-cpp-python at each n_ubatch with flash attention, the log's compute buffer beside the
plan's. The figures the docstring and docs/partial-offload.md quote come from this table.

    python3 benchmarks/recurrent_compute.py [--out DIR] [--ubatches 64,128,256,512,1024]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tuner.models import memplan  # noqa: E402
from tuner.models.archgen import write_kimi_linear, write_minimax01  # noqa: E402

LOAD = """
import sys
from llama_cpp import Llama
Llama(model_path=sys.argv[1], n_ctx=int(sys.argv[2]), n_ubatch=int(sys.argv[3]),
      n_batch=int(sys.argv[3]), flash_attn=True, n_gpu_layers=0, verbose=True)
"""
N_CTX = 2048
COMPUTE = re.compile(r"CPU compute buffer size =\s*([\d.]+) MiB")
# (architecture, n_head, head width, n_embd)
SHAPES = (("kimi-linear", 4, 64, 256), ("kimi-linear", 8, 64, 256),
          ("kimi-linear", 4, 128, 256), ("kimi-linear", 4, 64, 512),
          ("minimax-01", 4, 64, 256), ("minimax-01", 8, 64, 256),
          ("minimax-01", 4, 128, 256), ("minimax-01", 4, 64, 512))


def write(folder: Path, arch: str, n_head: int, width: int, n_embd: int) -> Path:
    path = folder / f"{arch}-{n_head}-{width}-{n_embd}.gguf"
    if arch == "kimi-linear":
        return write_kimi_linear(path, n_head=n_head, kda_head=width, n_embd=n_embd)
    return write_minimax01(path, n_head=n_head, head_dim=width, n_embd=n_embd)


def measured_mib(path: Path, n_ubatch: int) -> float:
    proc = subprocess.run([sys.executable, "-c", LOAD, str(path), str(N_CTX), str(n_ubatch)],
                          capture_output=True, text=True, timeout=300, check=False)
    m = COMPUTE.search(proc.stderr)
    if proc.returncode != 0 or m is None:
        raise SystemExit(f"load of {path.name} at n_ubatch {n_ubatch} failed:\n"
                         f"{proc.stderr[-1500:]}")
    return float(m.group(1))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=None, help="folder for the files (default: temp)")
    p.add_argument("--ubatches", default="64,128,256,512,1024")
    p.add_argument("--shapes", type=int, default=len(SHAPES), help="the first N shapes")
    a = p.parse_args()
    ubatches = [int(x) for x in a.ubatches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = a.out or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        print(f"| arch | n_head | head width | n_embd | n_ubatch | measured MiB | planned MiB "
              f"| error |  (CPU, flash attention, n_ctx {N_CTX})")
        print("|---|---|---|---|---|---|---|---|")
        for arch, n_head, width, n_embd in SHAPES[:a.shapes]:
            path = write(folder, arch, n_head, width, n_embd)
            layout = memplan.read_layout(path)
            for ub in ubatches:
                got = measured_mib(path, ub)
                plan = memplan.compute_bytes(layout, ub, N_CTX, True) / memplan.MIB
                print(f"| {arch} | {n_head} | {width} | {n_embd} | {ub} | {got:.2f} | "
                      f"{plan:.2f} | {(plan - got) / got * 100:+.1f}% |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
