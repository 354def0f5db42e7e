"""How close a trial came to the hardware's limits: generation speed as a share of the GPU's
peak memory bandwidth (decoding one token reads every weight and the KV cache so far; of a
mixture of experts, the experts it uses) and prompt speed as a share of its peak tensor
throughput (about 2 FLOPs per parameter per token, the used experts' for a mixture).

Peaks come from a table keyed by the GPU name NVML reports, with the public spec sheet named for
each; ``--peak-bandwidth-gbs`` / ``--peak-tflops`` override them (or supply them for a CPU).
Every assumption is stated in ``Roofline.assumptions`` and shown with the figures."""

from __future__ import annotations

import re
from pathlib import Path

from tuner.errors import TunerError
from tuner.models import memplan
from tuner.models.ggufshape import ModelShape, read_shape
from tuner.results.records import TrialRecord
from tuner.specs import Frozen


class Peak(Frozen):
    name: str
    bandwidth_gbs: float  # decimal GB/s
    tflops: float  # dense FP16/BF16 tensor TFLOPS (no sparsity)
    source: str


# First match wins, so the specific names come before the general ones.
PEAKS: list[tuple[str, Peak]] = [
    # NVIDIA H200 Tensor Core GPU datasheet (2024): 4.8 TB/s, FP16 1,979 TFLOPS with sparsity
    (r"H200\s*NVL", Peak(name="H200 NVL", bandwidth_gbs=4800, tflops=835.5,
                         source="NVIDIA H200 datasheet (H200 NVL column)")),
    (r"H200", Peak(name="H200 SXM", bandwidth_gbs=4800, tflops=989.5,
                   source="NVIDIA H200 datasheet (H200 SXM column)")),
    # NVIDIA H100 Tensor Core GPU datasheet: SXM 3.35 TB/s / 1,979 sparse; PCIe 2 TB/s / 1,513;
    # NVL 3.9 TB/s / 1,671 (dense is half of the sparse figure)
    (r"H100\s*NVL", Peak(name="H100 NVL", bandwidth_gbs=3900, tflops=835.5,
                         source="NVIDIA H100 datasheet (H100 NVL column)")),
    (r"H100\s*PCIe", Peak(name="H100 PCIe", bandwidth_gbs=2000, tflops=756.5,
                          source="NVIDIA H100 datasheet (H100 PCIe column)")),
    (r"H100", Peak(name="H100 SXM", bandwidth_gbs=3350, tflops=989.5,
                   source="NVIDIA H100 datasheet (H100 SXM column)")),
    # NVIDIA A100 Tensor Core GPU datasheet: FP16 tensor 312 TFLOPS dense; 40GB 1,555 GB/s,
    # 80GB SXM 2,039 GB/s, 80GB PCIe 1,935 GB/s
    (r"A100.*PCIe.*80|A100.*80GB\s*PCIe", Peak(name="A100 80GB PCIe", bandwidth_gbs=1935,
                                               tflops=312, source="NVIDIA A100 datasheet")),
    (r"A100.*40GB|A100-PCIE-40", Peak(name="A100 40GB", bandwidth_gbs=1555, tflops=312,
                                      source="NVIDIA A100 datasheet")),
    (r"A100", Peak(name="A100 80GB SXM", bandwidth_gbs=2039, tflops=312,
                   source="NVIDIA A100 datasheet")),
    # NVIDIA L40S datasheet: 864 GB/s, FP16 tensor 362.05 TFLOPS dense (733 with sparsity)
    (r"L40S", Peak(name="L40S", bandwidth_gbs=864, tflops=362.05,
                   source="NVIDIA L40S datasheet")),
    # NVIDIA L40 datasheet: 864 GB/s, FP16 tensor 181.05 TFLOPS dense
    (r"L40\b", Peak(name="L40", bandwidth_gbs=864, tflops=181.05, source="NVIDIA L40 datasheet")),
    # NVIDIA L4 datasheet: 300 GB/s, FP16 tensor 121 TFLOPS dense (242 with sparsity)
    (r"\bL4\b", Peak(name="L4", bandwidth_gbs=300, tflops=121, source="NVIDIA L4 datasheet")),
    # NVIDIA A10 datasheet: 600 GB/s, FP16 tensor 125 TFLOPS dense
    (r"\bA10\b", Peak(name="A10", bandwidth_gbs=600, tflops=125, source="NVIDIA A10 datasheet")),
    # NVIDIA Ada Lovelace architecture whitepaper, appendix: RTX 4090 1,008 GB/s, FP16 tensor
    # with FP16 accumulate 330.3 TFLOPS dense (165.2 with FP32 accumulate)
    (r"RTX\s*4090", Peak(name="GeForce RTX 4090", bandwidth_gbs=1008, tflops=330.3,
                         source="NVIDIA Ada Lovelace architecture whitepaper")),
    # NVIDIA Ampere GA102 whitepaper: RTX 3090 936 GB/s, FP16 tensor (FP16 accumulate) 142 dense
    (r"RTX\s*3090", Peak(name="GeForce RTX 3090", bandwidth_gbs=936, tflops=142,
                         source="NVIDIA Ampere GA102 whitepaper")),
    # NVIDIA V100 datasheet: 900 GB/s; tensor 125 TFLOPS (SXM2), 112 (PCIe)
    (r"V100.*PCIE", Peak(name="V100 PCIe", bandwidth_gbs=900, tflops=112,
                         source="NVIDIA V100 datasheet")),
    (r"V100", Peak(name="V100 SXM2", bandwidth_gbs=900, tflops=125,
                   source="NVIDIA V100 datasheet")),
    # NVIDIA T4 datasheet: 320 GB/s, mixed-precision (FP16/FP32) 65 TFLOPS
    (r"\bT4\b", Peak(name="T4", bandwidth_gbs=320, tflops=65, source="NVIDIA T4 datasheet")),
]


def peak_for(gpu_name: str | None) -> Peak | None:
    """The table's entry for an NVML GPU name, e.g. 'NVIDIA H100 80GB HBM3' -> H100 SXM."""
    if not gpu_name:
        return None
    for pattern, peak in PEAKS:
        if re.search(pattern, gpu_name, re.IGNORECASE):
            return peak
    return None


class Roofline(Frozen):
    trial: int
    gpu: str | None
    peak_name: str | None
    peak_bandwidth_gbs: float | None
    peak_tflops: float | None
    peak_source: str
    weight_bytes: float
    weight_source: str
    kv_bytes_per_depth_token: float | None
    mean_depth: float
    bytes_per_token: float
    tg_tps: float | None
    achieved_gbs: float | None
    bandwidth_share: float | None
    parameters: int | None
    parameters_source: str
    flops_per_token: float | None
    pp_tps: float | None
    achieved_tflops: float | None
    tflops_share: float | None
    assumptions: list[str]


def _weights(record: TrialRecord, layout: memplan.ModelLayout | None) -> tuple[float, str]:
    """Bytes of weights one decode step reads: the model buffers llama.cpp put on the GPU (from
    its load log) when the trial ran on CUDA, else the model file's size; of a mixture of
    experts only the experts a token uses (``layout``: the model's, when its file is here)."""
    unused = layout.experts_unused_share if layout else 0.0
    model_bufs = record.buffers_mib.get("model") or {}
    on_gpu = sum(v for k, v in model_bufs.items() if k.upper().startswith("CUDA"))
    if record.spec.model.device == "cuda" and on_gpu > 0:
        layers = memplan.gpu_layers(layout, record.spec.model.n_gpu_layers)[0] if layout else ()
        skip = unused * sum(layout.expert_bytes[il] for il in layers) if layout else 0.0
        return on_gpu * 2**20 - skip, (
            f"the model's buffers on the GPU from llama.cpp's load log ({on_gpu:,.0f} MiB; the "
            f"token embeddings stay on the CPU){_unused(layout, skip)}")
    size = record.environment.model_bytes if record.environment else 0
    skip = unused * sum(layout.expert_bytes) if layout else 0.0
    return float(size) - skip, f"the model file's size ({size / 2**20:,.0f} MiB){_unused(layout, skip)}"


def _unused(layout: memplan.ModelLayout | None, skip: float) -> str:
    if layout is None or not skip:
        return ""
    return (f", less the experts a token does not read ({skip / 2**20:,.0f} MiB: it uses "
            f"{layout.n_expert_used} of {layout.n_expert} per layer)")


def _kv_per_token(record: TrialRecord) -> float | None:
    """KV cache bytes per token of depth: the KV buffers from the load log over its n_ctx."""
    p = record.placement or {}
    kv = sum((record.buffers_mib.get("kv") or {}).values())
    n_ctx = p.get("n_ctx")
    return kv * 2**20 / n_ctx if kv and isinstance(n_ctx, int) and n_ctx > 0 else None


def _model_file(record: TrialRecord, model_file: Path | None) -> tuple[Path | None, str]:
    """The model file to count from, or why there is none."""
    env = record.environment
    path = Path(model_file) if model_file else (Path(env.model_path) if env else None)
    if path is None:
        return None, "unavailable: the record names no model file"
    if not path.is_file():
        return None, (f"unavailable: {path} is not on this machine (give --model-file with a "
                      "copy to count them)")
    if model_file is None and env is not None and path.stat().st_size != env.model_bytes:
        return None, f"unavailable: {path} changed since the sweep (its size differs)"
    return path, ""


def _parameters(path: Path | None, why: str,
                model_file: Path | None) -> tuple[ModelShape | None, str]:
    if path is None:
        return None, why
    try:
        shape = read_shape(path)
    except TunerError as e:
        return None, f"unavailable: {e.message}"
    given = " (given with --model-file)" if model_file else ""
    active = (f", {shape.active_matmul_parameters:,} of them through the experts a token uses"
              if shape.active_matmul_parameters != shape.matmul_parameters else "")
    return shape, (f"counted from the GGUF header of {path}{given}: {shape.matmul_parameters:,} "
                   f"in matrix multiplies{active}, {shape.parameters:,} in all")


def _layout(path: Path | None) -> memplan.ModelLayout | None:
    if path is None:
        return None
    try:
        return memplan.read_layout(path)
    except (ValueError, TunerError):  # a shape the plan cannot read: no experts known
        return None


def roofline(record: TrialRecord, *, peak_bandwidth_gbs: float | None = None,
             peak_tflops: float | None = None, model_file: Path | None = None) -> Roofline:
    """The roofline shares of one measured trial (see the module docstring)."""
    m = record.measurement
    env = record.environment
    gpu = env.gpus[0].get("name") if env and env.gpus else None
    peak = peak_for(gpu) if record.spec.model.device == "cuda" else None
    bw = peak_bandwidth_gbs or (peak.bandwidth_gbs if peak else None)
    tf = peak_tflops or (peak.tflops if peak else None)
    given = [f"--peak-bandwidth-gbs {peak_bandwidth_gbs:g}" if peak_bandwidth_gbs else "",
             f"--peak-tflops {peak_tflops:g}" if peak_tflops else ""]
    source = "; ".join(x for x in [*given, peak.source if peak else ""] if x) or (
        f"no peak known for {gpu or 'this device (no GPU recorded)'}: give --peak-bandwidth-gbs "
        "and --peak-tflops")
    path, why = _model_file(record, model_file)
    weights, weight_source = _weights(record, _layout(path))
    kv = _kv_per_token(record)
    wl = record.workload
    depth = wl.prompt_tokens + max(wl.gen_tokens - 1, 0) / 2
    per_token = weights + (kv or 0.0) * depth
    tg = m.tg_tps.median if m and m.tg_tps else None
    gbs = per_token * tg / 1e9 if tg else None
    shape, params_source = _parameters(path, why, model_file)
    params = shape.active_matmul_parameters if shape else None
    flops = 2.0 * params if params else None
    pp = m.pp_tps.median if m and m.prompt_tokens else None
    tflops = flops * pp / 1e12 if flops and pp else None
    assumptions = [
        f"generation reads every weight it uses once per token: {weight_source}",
        (f"plus the KV cache up to the mean generation depth ({depth:,.0f} tokens) at "
         f"{kv:,.0f} bytes per token of depth (KV buffers over n_ctx from the load log)"
         if kv else "KV cache reads not counted (no KV buffer sizes in the record)"),
        "prompt processing does 2 FLOPs per weight per token in matrix multiplies (the token "
        "embedding lookup excluded); attention's own FLOPs, which grow with depth, are not "
        "counted, so the share is a lower bound",
        f"peaks: {source} (dense FP16 tensor throughput, no sparsity)",
    ]
    return Roofline(
        trial=record.number, gpu=gpu, peak_name=peak.name if peak else None,
        peak_bandwidth_gbs=bw, peak_tflops=tf, peak_source=source, weight_bytes=weights,
        weight_source=weight_source, kv_bytes_per_depth_token=kv, mean_depth=depth,
        bytes_per_token=per_token, tg_tps=tg, achieved_gbs=gbs,
        bandwidth_share=gbs / bw if gbs and bw else None, parameters=params,
        parameters_source=params_source, flops_per_token=flops, pp_tps=pp,
        achieved_tflops=tflops, tflops_share=tflops / tf if tflops and tf else None,
        assumptions=assumptions,
    )
