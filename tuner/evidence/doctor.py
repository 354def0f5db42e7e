"""``tuner doctor``: read a llama.cpp load log and say, in plain lines, where the model went,
what that means, and how to get it onto the GPU.

The most common way to "run on the GPU" and not do so is silent: a CPU-only wheel of
llama-cpp-python, ``n_gpu_layers`` left at its default of 0, a model that did not fit, or the
KV cache kept in host memory. Each leaves a distinct trace in the log, and each has one fix.
The report is a list of lines; the CLI decides how to render them.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections import Counter
from pathlib import Path
from typing import BinaryIO

from tuner.builds.buildinfo import BuildFlags, variant_of
from tuner.builds.cpuflags import CUDA_INSTALL_HINT
from tuner.errors import BadInput
from tuner.evidence.deaths import amx_lines, says_out_of_memory
from tuner.evidence.opplacement import REPORT_HINT, OpSummary, check_ops
from tuner.evidence.placement import (
    Expectation,
    PlacementEvidence,
    asks_every_layer,
    experts_in_log,
    is_cpu_device,
    is_cuda_device,
    is_full_offload,
    parse_load_log,
    verify,
)
from tuner.specs import Frozen

_SNIFF_BYTES = 64 * 1024
_MAX_BYTES = 256 * 1024 * 1024
_CAPTURE_HINT = ("capture llama.cpp's output while loading the model, e.g. "
                 "Llama(model_path, n_gpu_layers=-1, verbose=True) with stderr sent to a file")
_SHRINK = ("free VRAM, or make the load smaller: fewer GPU layers on purpose, a shorter n_ctx, "
           "a q8_0 KV cache (type_k/type_v q8_0 with flash_attn), or a smaller quant")


class Diagnosis(Frozen):
    """``exit_code`` 0 when everything asked for is on the GPU, 3 when not (the CLI contract's
    "environment unfit")."""

    exit_code: int
    lines: list[str]


def diagnose(text: str, n_gpu_layers: int = -1) -> Diagnosis:
    """Report on one captured load log, checked against a CUDA run of ``n_gpu_layers`` layers
    (-1: all). Raises BadInput when the text shows no model load at all. A log holding
    several loads (two runs saved into one file) is judged by its last."""
    text = last_load(text)
    ev = parse_load_log(text)
    if not ev.is_load_log:
        raise BadInput("the log shows no model load (no llama_model_loader or load_tensors "
                       "lines)", hint=_CAPTURE_HINT)
    # Expert weights kept on the host (--n-cpu-moe K) are asked by the user's own overrides:
    # the log's K is taken as asked, and checked for what it must look like.
    experts = experts_in_log(ev)
    verdict = verify(ev, Expectation(device="cuda", n_gpu_layers=n_gpu_layers,
                                     n_cpu_moe=experts))
    # A saved log rarely holds the scheduler's report; when it does, operations count too.
    ops = check_ops(text, "cuda", full_offload=is_full_offload(ev, n_gpu_layers),
                    required=False, experts_on_host=experts)
    verified = verdict.verified and ops.verified is not False
    lines = [*_facts(ev), _ops_fact(ops)]
    if verified:
        lines.append(f"Verdict: on the GPU as asked ({verdict.summary}).")
        lines += _reassurance(ev)
    else:
        lines.append(f"Verdict: NOT on the GPU as asked ({verdict.summary}):")
        lines += [f"  - {r}" for r in [*verdict.reasons, *ops.reasons]]
        advice = _advice(ev, n_gpu_layers) if not verdict.verified else []
        if ops.verified is False:
            advice.append(_OPS_ADVICE)
        for meaning, fix in advice:
            lines += [f"Meaning: {meaning}", f"Fix: {fix}"]
    lines += amx_lines(text)
    return Diagnosis(exit_code=0 if verified else 3, lines=lines)


_LOAD_START = "llama_model_loader: loaded meta data"
_DEVICE_INIT = "ggml_cuda_init:"


def last_load(text: str) -> str:
    """The part of a log that belongs to its last model load: from that load's first loader
    line, or from the device list its library printed just before it (a new process's log).
    A later load of the same process prints no device list of its own; the one printed
    earlier is kept for it when it uses a CUDA device."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, ln in enumerate(lines) if ln.startswith(_LOAD_START)]
    if len(starts) < 2:
        return text
    last, before = starts[-1], starts[-2]
    inits = [i for i, ln in enumerate(lines) if ln.startswith(_DEVICE_INIT)]
    own = [i for i in inits if before < i < last]
    if own:
        return "".join(lines[own[-1]:])
    segment = "".join(lines[last:])
    earlier = [i for i in inits if i < before]
    if earlier and "using device CUDA" in segment:
        block = [lines[earlier[-1]]]
        block += [ln for ln in lines[earlier[-1] + 1:before] if ln.startswith("  Device ")]
        return "".join(block) + segment
    return segment


_OPS_ADVICE = (
    "llama.cpp's CUDA backend has no kernel for the operations named above with these "
    "settings, so its scheduler runs them on the CPU and copies data across on every batch",
    "use settings this build has kernels for (for FLASH_ATTN: a K/V cache type pair the build "
    "lists under FA_QUANTS, or a build with GGML_CUDA_FA_ALL_QUANTS=ON), or turn flash "
    "attention off")


def _ops_fact(ops: OpSummary) -> str:
    if not ops.reports:
        return f"Operations: no scheduler report in the log ({REPORT_HINT})"
    return (f"Operations: {ops.reports} scheduler reports; the last: "
            f"{ops.summary.removeprefix('ops: ')}")


def diagnose_file(path: str | os.PathLike[str], n_gpu_layers: int = -1) -> Diagnosis:
    """``diagnose`` on a log file; every way the file cannot be a load log is one BadInput."""
    p = Path(path)
    if not p.exists():
        raise BadInput(f"log file not found: {p}")
    if p.is_dir():
        raise BadInput(f"{p} is a directory, not a log file")
    try:
        if p.stat().st_size > _MAX_BYTES:
            raise BadInput(f"{p} is over {_MAX_BYTES // 2**20} MiB: not a llama.cpp load log")
        with p.open("rb") as f:
            head = f.read(_SNIFF_BYTES)
            if head.startswith(b"\x1f\x8b"):  # a gzipped log (as saved logs often are)
                f.seek(0)
                head = _gunzip(f, p)
            if head.startswith(b"GGUF"):
                raise BadInput(f"{p} is a GGUF model, not a log", hint=_CAPTURE_HINT)
            if _looks_binary(head):
                raise BadInput(f"{p} is binary data, not a llama.cpp log")
            data = head + f.read()
    except OSError as e:
        raise BadInput(f"cannot read {p}: {e.strerror or e}") from None
    if not data.strip():
        raise BadInput(f"{p} is empty", hint=_CAPTURE_HINT)
    try:
        return diagnose(data.decode("utf-8", errors="replace"), n_gpu_layers)
    except BadInput as e:
        raise BadInput(f"{p}: {e.message}", hint=e.hint) from None


def _gunzip(f: BinaryIO, p: Path) -> bytes:
    """The whole text of a gzipped log, refused past _MAX_BYTES (a log never gets near)."""
    try:
        with gzip.GzipFile(fileobj=f) as z:
            data = z.read(_MAX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise BadInput(f"{p} is not a readable gzip file: {e}") from None
    if len(data) > _MAX_BYTES:
        raise BadInput(f"{p} unpacks to over {_MAX_BYTES // 2**20} MiB: not a llama.cpp log")
    return data


def _looks_binary(head: bytes) -> bool:
    if b"\x00" in head:
        return True
    text = head.decode("utf-8", errors="replace")
    odd = sum(1 for c in text if c == "\ufffd" or (ord(c) < 32 and c not in "\t\n\r\f\v\x1b"))
    return odd > max(8, len(text) // 20)


def _facts(ev: PlacementEvidence) -> list[str]:
    lines = [f"GPUs llama.cpp found: {_gpus(ev)}", f"Build: {_build(ev.build)}"]
    counts = Counter(ev.layer_devices.values())
    per_device = ", ".join(f"{d}: {n}" for d, n in sorted(counts.items())) or "none listed"
    if ev.offloaded_layers is not None:
        lines.append(f"Layers: {ev.offloaded_layers}/{ev.total_layers} offloaded to GPU "
                     f"({per_device})")
    else:
        lines.append(f"Layers: no 'offloaded N/M layers to GPU' line ({per_device})")
    kv_counts = Counter(ev.kv_layer_devices.values())
    kv = ", ".join(f"{d} ({n} layers)" for d, n in sorted(kv_counts.items())) or "not listed"
    kv += f"; buffers {_mib(ev.kv_buffers_mib)}"
    if ev.kv_types:
        kv += f"; K {ev.kv_types[0]}, V {ev.kv_types[1]}"
    lines.append(f"KV cache: {kv}")
    lines.append(f"Model buffers: {_mib(ev.model_buffers_mib)}")
    lines.append(f"Compute buffers: {_mib(ev.compute_buffers_mib)}")
    ctx = [f"{k} {v}" for k, v in (("n_ctx", ev.n_ctx), ("n_batch", ev.n_batch),
                                   ("n_ubatch", ev.n_ubatch), ("flash_attn", ev.flash_attn))
           if v is not None]
    if ctx:
        lines.append("Context: " + ", ".join(ctx))
    if ev.errors:
        lines.append("Errors in the log:")
        lines += [f"  {e}" for e in ev.errors[:10]]
    return lines


def _gpus(ev: PlacementEvidence) -> str:
    if not ev.cuda_devices:
        return "none (no ggml_cuda_init device lines)"
    return ", ".join(f"{i}: {name}" for i, name in enumerate(ev.cuda_devices))


def _build(flags: BuildFlags | None) -> str:
    if flags is None:
        return "not stated (no system-info line in the log)"
    if not flags.cuda:
        return f"CPU only, no CUDA backend (backends: {', '.join(flags.backends)})"
    graphs = "on" if flags.cuda_graphs else "off"
    fa = "all pairs" if flags.fa_all_quants else (
        ", ".join(f"{k}-{v}" for k, v in flags.fa_quants) or "not listed")
    return (f"CUDA, variant {variant_of(flags)}, archs {','.join(flags.archs) or '?'}, "
            f"CUDA graphs {graphs}, flash-attention K/V kernels {fa}")


def _mib(buffers: dict[str, float]) -> str:
    return ", ".join(f"{n} {mib:.2f} MiB" for n, mib in buffers.items()) or "none listed"


def _reassurance(ev: PlacementEvidence) -> list[str]:
    host = {n: m for n, m in ev.model_buffers_mib.items() if is_cpu_device(n) and m > 0}
    if not host:
        return []
    return [f"Meaning: the model runs on the GPU; the host model buffer ({_mib(host)}) holds the "
            "token embeddings, which llama.cpp keeps in host memory by design."]


def _advice(ev: PlacementEvidence, n_gpu_layers: int) -> list[tuple[str, str]]:
    """(meaning, fix) for each cause the log points at, most fundamental first."""
    flags, layers = ev.build, ev.layer_devices
    on_gpu = sum(1 for d in layers.values() if is_cuda_device(d))
    total = ev.total_layers or len(layers)
    out: list[tuple[str, str]] = []
    if not layers:
        out.append(("the log has no per-layer placement lines; llama.cpp prints them only "
                    "with verbose logging", _CAPTURE_HINT))
    if flags is not None and not flags.cuda:
        out.append(("this llama.cpp library was built without CUDA, so nothing can run on "
                    "the GPU", CUDA_INSTALL_HINT))
        return out
    # llama.cpp prints "offloaded N/M" whenever it has a GPU to offload to, even for N = 0.
    if layers and not on_gpu and ev.offloaded_layers is None:
        if flags is None:
            out.append(("no GPU took part: the library was built without CUDA, or found no GPU",
                        f"{CUDA_INSTALL_HINT}; with a CUDA build, check nvidia-smi and "
                        "CUDA_VISIBLE_DEVICES"))
        else:
            out.append(("the library has CUDA but found no GPU",
                        "check nvidia-smi, the NVIDIA driver, and CUDA_VISIBLE_DEVICES"))
        return out
    full = asks_every_layer(n_gpu_layers, total)
    placed = min(on_gpu, ev.offloaded_layers if ev.offloaded_layers is not None else on_gpu)
    if layers and not placed:
        out.append(("the library has CUDA but kept every layer on the CPU: n_gpu_layers was 0 "
                    "(llama-cpp-python's default)", "set n_gpu_layers=-1 to offload every layer"))
    elif layers and full and placed < total:
        out.append((f"only {placed} of {total} layers went to the GPU: n_gpu_layers was set "
                    "below that, or llama.cpp lowered it to fit the free VRAM",
                    f"set n_gpu_layers=-1; if it does not fit, {_SHRINK}"))
    elif layers and not full and placed != min(n_gpu_layers, total):
        out.append((f"{placed} layers went to the GPU, not the {n_gpu_layers} asked for",
                    f"load with n_gpu_layers={n_gpu_layers}"))
    if layers and not ev.kv_layer_devices and not ev.kv_buffers_mib:
        out.append(("the log stops before llama.cpp created a context, so where the KV cache "
                    "lives is unknown", "capture the log through context creation too"))
    if any(says_out_of_memory(e) for e in ev.errors):
        out.append(("CUDA ran out of memory", _SHRINK))
    kv_home = any(is_cuda_device(layers.get(i, "")) and not is_cuda_device(d)
                  for i, d in ev.kv_layer_devices.items())
    kv_host_buffer = full and on_gpu and any(
        mib > 0 and not is_cuda_device(n) for n, mib in ev.kv_buffers_mib.items())
    if kv_home or kv_host_buffer:
        out.append(("layers are on the GPU but the KV cache is in host memory, so attention "
                    "runs on the CPU", "set offload_kqv=True (llama-cpp-python's default)"))
    return out
