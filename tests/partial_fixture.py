"""A partial-offload load log made from the real full-offload one (fixtures/
cuda-h100-full-offload.log: a 7B-shaped Q4_0 model, 32 layers, every one on CUDA0) by editing
the lines llama.cpp prints differently when asked ``n_gpu_layers`` N < 33, as the vendored
source prints them:

- ``load_tensors: layer %3d assigned to device %s``: layers below ``n_layer + 1 - N`` on CPU
  (``i_gpu_start``), the rest (the output layer, index 32, among them) on CUDA0;
- ``offloading output layer to GPU`` / ``offloading %d repeating layers to GPU`` (N - 1) /
  ``offloaded %d/%d layers to GPU``;
- the model buffers: the CPU layers' weights move from ``CUDA0`` to ``CPU_Mapped`` (mmap
  keeps them mapped, the host buffer type is skipped under mmap); each layer of this model is
  (3577.56 - 102.54 output) / 32 = 108.594 MiB;
- ``llama_kv_cache: layer %3d: dev = %s`` follows each layer's device, and the KV buffers split
  per device: 64 MiB per layer here (4096 cells, 4096-wide f16 K and V).

The compute-buffer lines are left as the full load printed them (the scheduler's figures of a
partial load are not derived here)."""

from __future__ import annotations

import re
from pathlib import Path

FULL = Path(__file__).parent / "fixtures" / "cuda-h100-full-offload.log"
N_LAYER = 32
LAYER_MIB = (3577.56 - 102.54) / N_LAYER
EMBD_MIB = 70.31
KV_LAYER_MIB = 64.0


def partial_log(n_gpu_layers: int, text: str | None = None) -> str:
    """The full-offload fixture as llama.cpp prints it for ``n_gpu_layers`` (1..32)."""
    text = FULL.read_text() if text is None else text
    start = N_LAYER + 1 - n_gpu_layers
    n_cpu = min(start, N_LAYER)
    out = []
    for line in text.splitlines():
        if m := re.match(r"load_tensors: layer +(\d+) assigned to device CUDA0(.*)", line):
            il = int(m.group(1))
            dev = "CPU" if il < start else "CUDA0"
            line = f"load_tensors: layer {il:3d} assigned to device {dev}{m.group(2)}"
        elif line.startswith("load_tensors: offloading ") and "repeating" in line:
            line = f"load_tensors: offloading {n_gpu_layers - 1} repeating layers to GPU"
        elif line.startswith("load_tensors: offloaded "):
            line = f"load_tensors: offloaded {n_gpu_layers}/{N_LAYER + 1} layers to GPU"
        elif "CPU_Mapped model buffer size" in line:
            line = (f"load_tensors:   CPU_Mapped model buffer size = "
                    f"{EMBD_MIB + n_cpu * LAYER_MIB:8.2f} MiB")
        elif "CUDA0 model buffer size" in line:
            line = (f"load_tensors:        CUDA0 model buffer size = "
                    f"{3577.56 - n_cpu * LAYER_MIB:8.2f} MiB")
        elif m := re.match(r"llama_kv_cache: layer +(\d+): dev = CUDA0", line):
            il = int(m.group(1))
            line = f"llama_kv_cache: layer {il:3d}: dev = {'CPU' if il < start else 'CUDA0'}"
        elif "CUDA0 KV buffer size" in line:
            out.append(f"llama_kv_cache:        CPU KV buffer size = {n_cpu * KV_LAYER_MIB:8.2f} MiB")
            line = (f"llama_kv_cache:      CUDA0 KV buffer size = "
                    f"{(N_LAYER - n_cpu) * KV_LAYER_MIB:8.2f} MiB")
        out.append(line)
    return "\n".join(out) + "\n"
