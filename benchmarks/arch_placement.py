"""The memory plan per device against llama.cpp's own loads, for the architectures whose caches
are not a llama's (tuner/models/archgen.py: sliding windows, MLA, a hybrid with recurrent
layers and a prediction layer, a mixture of experts, a recurrent model). tests/test_memplan.py checks the totals
on the CPU; on a GPU this checks what each device holds at several n_gpu_layers: the weights
(the output layer first, the rest from the last layer down), the KV cache and recurrent state
on their layer's device, and the compute buffers.

    python benchmarks/arch_placement.py --out /tmp/archs        # the table last

Each load runs in a process of its own (real llama-cpp-python, verbose log parsed by
tuner.evidence.placement). On a machine without CUDA every layer stays on the CPU and only the
host column is compared."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tuner.evidence.placement import is_cuda_device, parse_load_log  # noqa: E402
from tuner.models import memplan  # noqa: E402
from tuner.models.archgen import (  # noqa: E402
    write_deepseek2_mla,
    write_gemma3,
    write_kimi_linear,
    write_mamba,
    write_minimax01,
    write_qwen3moe,
    write_qwen35,
    write_rwkv6,
)

MIB = memplan.MIB
LOAD = """
import sys
from llama_cpp import Llama
path, ngl, n_ctx, ub = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
Llama(model_path=path, n_gpu_layers=ngl, n_ctx=n_ctx, n_batch=ub, n_ubatch=ub,
      flash_attn=True, verbose=True)
"""
_RS = re.compile(r"(\S+) RS buffer size =\s*([\d.]+) MiB")
WRITERS = {"gemma3": write_gemma3, "deepseek2-mla": write_deepseek2_mla,
           "qwen35": write_qwen35, "qwen3moe": write_qwen3moe, "mamba": write_mamba,
           "rwkv6": write_rwkv6, "kimi-linear": write_kimi_linear,
           "minimax-01": write_minimax01}


def load(path: Path, ngl: int, n_ctx: int, n_ubatch: int) -> dict[str, dict[str, float]]:
    """MiB per device of each kind (model, kv with the recurrent state, compute) one real
    load's log shows."""
    proc = subprocess.run([sys.executable, "-c", LOAD, str(path), str(ngl), str(n_ctx),
                           str(n_ubatch)], capture_output=True, text=True, timeout=300,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"load of {path.name} at ngl {ngl} failed:\n{proc.stderr[-1500:]}")
    ev = parse_load_log(proc.stderr)
    kv = dict(ev.kv_buffers_mib)
    for m in _RS.finditer(proc.stderr):
        kv[m.group(1)] = kv.get(m.group(1), 0.0) + float(m.group(2))
    return {"model": dict(ev.model_buffers_mib), "kv": kv, "compute": dict(ev.compute_buffers_mib)}


def _side(figs: dict[str, float], gpu: bool) -> float:
    return sum(v for d, v in figs.items() if is_cuda_device(d) == gpu)


def gpu_offload() -> bool:
    """Whether the installed library can offload (a CUDA build), asked in a child process."""
    proc = subprocess.run([sys.executable, "-c", "import llama_cpp; print(int("
                           "llama_cpp.llama_supports_gpu_offload()))"],
                          capture_output=True, text=True, timeout=120, check=False)
    return proc.stdout.strip() == "1"


def rows(name: str, path: Path, n_ctx: int, n_ubatch: int,
         cuda: bool) -> list[dict[str, object]]:
    """Without CUDA every layer stays on the host whatever n_gpu_layers asks: n_gpu_layers 0
    alone is compared."""
    layout = memplan.read_layout(path)
    out = []
    counts = {0, layout.n_offloadable // 2, layout.n_offloadable} if cuda else {0}
    for ngl in sorted(counts):
        got = load(path, ngl, n_ctx, n_ubatch)
        p = memplan.place(layout, ngl, memplan.Context(n_ctx=n_ctx, n_ubatch=n_ubatch,
                                                       flash_attn=True))
        for gpu, use in ((True, p.gpu), (False, p.host)):
            if gpu and not cuda:
                continue
            out.append({
                "model": name, "ngl": ngl, "device": "GPU" if gpu else "host",
                "weights": [_side(got["model"], gpu), use.weights / MIB],
                "kv+state": [_side(got["kv"], gpu), use.kv / MIB],
                "compute": [_side(got["compute"], gpu), use.compute / MIB]})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--n-ubatch", type=int, default=512)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    table = []
    cuda = gpu_offload()
    for name, write in WRITERS.items():
        path = write(args.out / f"{name}.gguf")
        table += rows(name, path, args.n_ctx, args.n_ubatch, cuda)
    (args.out / "arch-placement.json").write_text(json.dumps(table, indent=1))
    print("| model | n_gpu_layers | device | weights log / plan MiB | KV+state log / plan | "
          "compute log / plan |")
    print("|---|---|---|---|---|---|")
    for r in table:
        cells = [f"{r[k][0]:,.2f} / {r[k][1]:,.2f}" for k in ("weights", "kv+state", "compute")]
        print(f"| {r['model']} | {r['ngl']} | {r['device']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
