"""A model split across GPUs, as its load log shows it: what each CUDA device holds, and whether
the split is the one asked for (``split_mode``, ``main_gpu``, ``tensor_split``).

llama.cpp (src/llama.cpp, ``llama_prepare_model_devices``) lists the devices a model may use,
one ``using device CUDA0 (...) - N MiB free`` line each; split mode none keeps only
``main_gpu``'s. ``load_tensors`` (src/llama-model.cpp) then assigns each layer (the repeating
layers and the output layer) to one of them: layer ``il`` of ``n`` offloaded goes to the first
device whose cumulative share of the split exceeds ``il / n`` (shares: ``tensor_split``, or
each device's free memory when it is unset or all zero). The KV cache of a layer lives on its
layer's device (src/llama-kv-cache.cpp). Row mode assigns layers the same way and puts the
split matrices in a ``CUDA_Split`` buffer.

Nothing here reads the log: ``tuner.evidence.placement`` parses it into the evidence used here."""

from __future__ import annotations

import re
import struct
from bisect import bisect_right
from collections import Counter

from tuner.evidence.loadfacts import DeviceHolding, Expectation, PlacementEvidence

_CUDA_DEVICE = re.compile(r"CUDA\d+")
SPLIT_NONE, SPLIT_LAYER, SPLIT_ROW = 0, 1, 2


def is_cuda_device(name: str) -> bool:
    """A CUDA GPU (CUDA0, CUDA1, ...); CUDA_Host is pinned host memory, not the GPU."""
    return _CUDA_DEVICE.fullmatch(name) is not None


def per_device(ev: PlacementEvidence) -> dict[str, DeviceHolding]:
    """Every CUDA device the log names (in the model's device list, a layer, a KV layer or a
    buffer), in name order, with what it holds."""
    layers = Counter(ev.layer_devices.values())
    kv = Counter(ev.kv_layer_devices.values())
    names = {*ev.model_devices, *layers, *kv, *ev.model_buffers_mib, *ev.kv_buffers_mib,
             *ev.compute_buffers_mib}
    return {d: DeviceHolding(layers=layers[d], kv_layers=kv[d],
                             model_mib=ev.model_buffers_mib.get(d, 0.0),
                             kv_mib=ev.kv_buffers_mib.get(d, 0.0),
                             compute_mib=ev.compute_buffers_mib.get(d, 0.0))
            for d in sorted(names, key=_device_order) if is_cuda_device(d)}


def _device_order(name: str) -> tuple[int, str]:
    digits = name[4:] if name.startswith("CUDA") else ""
    return (int(digits) if digits.isdigit() else 1 << 30, name)


def gpus_used(ev: PlacementEvidence) -> list[str]:
    """The GPUs llama.cpp could place the model on: its ``using device`` lines, else (an older
    log) the CUDA devices it found."""
    if ev.model_devices:
        return [d for d in ev.model_devices if is_cuda_device(d)]
    return [f"CUDA{i}" for i in range(len(ev.cuda_devices))]


def _f32(x: float) -> float:
    return float(struct.unpack("f", struct.pack("f", x))[0])


def expected_layers(split: tuple[float, ...] | list[float], devices: list[str],
                    n_layers: int) -> dict[str, int]:
    """Layers per device llama.cpp assigns for an explicit ``split`` with every one of
    ``n_layers`` offloaded, in its float32 arithmetic (``load_tensors``' split points)."""
    shares = [float(x) for x in split[:len(devices)]] + [0.0] * (len(devices) - len(split))
    points: list[float] = []
    total = 0.0
    for x in shares:
        total = _f32(total + x)
        points.append(total)
    points = [_f32(p / total) for p in points]
    counts: Counter[str] = Counter()
    for il in range(n_layers):
        i = bisect_right(points, _f32(il / n_layers))
        counts[devices[min(i, len(devices) - 1)]] += 1
    return {d: counts[d] for d in devices if counts[d]}


def split_reasons(ev: PlacementEvidence, ex: Expectation, full: bool) -> list[str]:
    """Why the GPU layers are not split as asked (empty: they are). CPU-side layers are the
    caller's reasons; here only which GPU holds what."""
    gpu_layers = {i: d for i, d in ev.layer_devices.items() if is_cuda_device(d)}
    if not gpu_layers:
        return []
    held = Counter(gpu_layers.values())
    out: list[str] = []
    if ex.split_mode == SPLIT_NONE:
        main = f"CUDA{ex.main_gpu}"
        if away := {d: n for d, n in held.items() if d != main}:
            out.append(f"split_mode none: {_counts(away)} layers away from main_gpu {main}")
        if kv_away := sorted({d for d in ev.kv_layer_devices.values()
                              if is_cuda_device(d) and d != main}):
            out.append(f"split_mode none: KV cache on {', '.join(kv_away)}, expected only "
                       f"on {main}")
        return out
    gpus = gpus_used(ev)
    mode = {SPLIT_LAYER: "layer", SPLIT_ROW: "row"}.get(ex.split_mode, str(ex.split_mode))
    split = ex.tensor_split
    if split is not None and any(x > 0 for x in split[len(gpus):]) and gpus:
        out.append(f"tensor_split {_ratio(split)} names {len(split)} GPUs, llama.cpp used "
                   f"{len(gpus)} ({', '.join(gpus)})")
    elif split is not None and any(x > 0 for x in split) and full and gpus \
            and len(gpu_layers) == len(ev.layer_devices):
        want = expected_layers(split, gpus, len(gpu_layers))
        if dict(held) != want:
            out.append(f"tensor_split {_ratio(split)} puts {_counts(want)} layers, the log "
                       f"shows {_counts(dict(held))}")
    elif split is None and len(gpus) > 1 and len(held) == 1:
        out.append(f"split_mode {mode} across {len(gpus)} GPUs ({', '.join(gpus)}), but every "
                   f"layer is on {next(iter(held))}")
    return out


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{d} {n}" for d, n in sorted(counts.items(),
                                                   key=lambda x: _device_order(x[0])))


def _ratio(split: tuple[float, ...] | list[float]) -> str:
    return ":".join(f"{x:g}" for x in split)


def is_split(ev: PlacementEvidence) -> bool:
    """Layers or KV cache on more than one CUDA device."""
    return len({d for d in (*ev.layer_devices.values(), *ev.kv_layer_devices.values())
                if is_cuda_device(d)}) > 1


def split_summary(ev: PlacementEvidence) -> str:
    """"layers: CUDA0 17, CUDA1 16; KV: CUDA0 16, CUDA1 16; MiB model/KV/compute: CUDA0
    1788.8/1024.0/92.5, CUDA1 ...": what each device holds (host layers named too)."""
    layers = Counter(ev.layer_devices.values())
    kv = Counter(ev.kv_layer_devices.values())
    held = per_device(ev)
    mib = ", ".join(f"{d} {h.model_mib:.1f}/{h.kv_mib:.1f}/{h.compute_mib:.1f}"
                    for d, h in held.items())
    parts = [f"layers: {_counts(dict(layers))}"]
    if kv:
        parts.append(f"KV: {_counts(dict(kv))}")
    elif ev.kv_buffers_mib:
        parts.append("KV: " + ", ".join(sorted(ev.kv_buffers_mib)))
    if mib:
        parts.append(f"MiB model/KV/compute: {mib}")
    return "; ".join(parts)
