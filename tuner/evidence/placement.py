"""Where llama.cpp really put a model, read from its own load log, and whether that is what was
asked for.

A number measured with layers or the KV cache silently left in host memory is a CPU number, so
every trial's log is turned into evidence and checked. The evidence is what llama.cpp states
line by line (per-layer device assignment, the "offloaded N/M layers" count, per-layer KV cache
devices, buffer sizes per device), never a guess from the word "CPU": with full offload a
``CPU_Mapped`` model buffer remains, because the token embeddings stay on the host by design.

Log formats of older llama.cpp releases (``llm_load_tensors``, ``llama_kv_cache_init``,
``llama_new_context_with_model``) are read too. When a log holds several loads or contexts,
the last one counts: the parser starts that part of the evidence over at each.
"""

from __future__ import annotations

import re
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field

from pydantic import Field

from tuner import settings
from tuner.builds.buildinfo import DEVICE_LINE, BuildFlags, find_system_info, variant_of
from tuner.evidence.gpusplit import (
    is_cuda_device,
    is_split,
    per_device,
    split_reasons,
    split_summary,
)
from tuner.evidence.loadfacts import Expectation, PlacementEvidence
from tuner.models.gguftensors import EXPERT_TENSOR
from tuner.specs import Frozen, TrialSpec, Workload

# The CUDA backend's device lines: index, name and, where printed, the compute capability.
_LAYER = re.compile(r"^\s*layer\s+(\d+) assigned to device ([^\s,]+)")
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_BUFFER = re.compile(r"^\s*(\S+)\s+(model |KV |compute |RS )?buffer size\s*=\s*([\d.]+) MiB")
_KV_LAYER = re.compile(r"^\s*layer\s+(\d+): dev = (\S+)")
_KV_TYPES = re.compile(r"K \((\w+)\):.*V \((\w+)\):")
_CTX_INT = re.compile(r"^\s*(n_ctx|n_batch|n_ubatch)\s*=\s*(\d+)\s*$")
_FLASH = re.compile(r"^\s*flash_attn\s*=\s*(\w+)")
_FLASH_RESOLVED = re.compile(r"Flash Attention was \w+, set to (\w+)")
_FAILURE = re.compile(r"\b(?:error|failed|failure|out of memory|GGML_ASSERT)", re.IGNORECASE)
_USING_DEVICE = re.compile(r"using device (\S+) \(")
_OVERRIDDEN = re.compile(r"^tensor (\S+) \(.*\) buffer type overridden to (\S+)")
_BLOCK = re.compile(r"^blk\.(\d+)\.")
_LOAD_MODE = re.compile(r"\(load_mode = ([\w+]+)\)")

_MODEL_HEADS = ("load_tensors", "llm_load_tensors")
_CONTEXT_HEADS = ("llama_context", "llama_new_context_with_model", "llama_init_from_model")
_LOAD_HEADS = ("llama_model_loader", "load_tensors", "llm_load_tensors")
# Metadata dumps quote the model's own strings (chat templates), which may say "error".
_NOT_FAILURES = ("llama_model_loader: - kv", "print_info:", "Model metadata:")
_MAX_ERRORS = 50


def is_cpu_device(name: str) -> bool:
    return name.upper().startswith("CPU")


def parse_load_log(text: str) -> PlacementEvidence:
    """Evidence from a llama.cpp log. Never raises: what the log lacks stays None or empty."""
    reader = _LoadLogReader()
    for line in text.splitlines():
        reader.read(line)
    return reader.evidence(text)


@dataclass
class _LoadLogReader:
    """The evidence of a log read so far, line by line; a new load or context starts its part
    of the evidence over."""

    devices: dict[int, str] = field(default_factory=dict)
    model_devices: list[str] = field(default_factory=list)
    devices_closed: bool = False
    layers: dict[int, str] = field(default_factory=dict)
    overridden: dict[str, str] = field(default_factory=dict)
    kv_layers: dict[int, str] = field(default_factory=dict)
    model_buf: dict[str, float] = field(default_factory=dict)
    kv_buf: dict[str, float] = field(default_factory=dict)
    compute_buf: dict[str, float] = field(default_factory=dict)
    state_buf: dict[str, float] = field(default_factory=dict)
    ctx: dict[str, int] = field(default_factory=dict)
    offloaded: tuple[int, int] | None = None
    load_mode: str | None = None
    flash: str | None = None
    kv_types: tuple[str, str] | None = None
    errors: list[str] = field(default_factory=list)
    is_load: bool = False

    def read(self, line: str) -> None:
        """Take one line: at most one of the placement readers claims it; the flash attention
        verdict and failures are looked for on every line."""
        head, colon, rest = line.partition(":")
        if colon:
            self._load_line(head, rest)
        claimed = bool(colon) and (self._tensors_line(head, rest) or self._kv_cache_line(head, rest)
                                   or self._state_line(head, rest)
                                   or self._context_line(head, rest))
        if not claimed:
            self._device_or_buffer_line(line, bool(colon), rest)
        if "Flash Attention was" in line and (m := _FLASH_RESOLVED.search(line)):
            self.flash = m.group(1).lower()
        self._failure_line(line)

    def _load_line(self, head: str, rest: str) -> None:
        """Whether this is a load log at all, and the devices a load says it uses."""
        if head in _LOAD_HEADS:
            self.is_load = True
        if "using device" in rest and (m := _USING_DEVICE.search(rest)):
            if self.devices_closed:  # the device list of a new load
                self.model_devices, self.devices_closed = [], False
            self.model_devices.append(m.group(1))

    def _tensors_line(self, head: str, rest: str) -> bool:
        """The model's layers, offload count and buffers; a new load replaces the last."""
        if head not in _MODEL_HEADS:
            return False
        if "loading model tensors" in rest:
            self.layers, self.model_buf, self.offloaded = {}, {}, None
            self.overridden = {}
            self.devices_closed = True
            m = _LOAD_MODE.search(rest)
            self.load_mode = m.group(1) if m else None
        elif m := _LAYER.match(rest):
            self.layers[int(m.group(1))] = m.group(2)
        elif m := _OFFLOADED.search(rest):
            self.offloaded = (int(m.group(1)), int(m.group(2)))
        elif m := _BUFFER.match(rest):
            _add(self.model_buf, m.group(1), m.group(3))
        return True

    def _kv_cache_line(self, head: str, rest: str) -> bool:
        """The KV cache's per-layer devices, buffers and types."""
        if not head.startswith("llama_kv_cache"):
            return False
        if m := _KV_LAYER.match(rest):
            self.kv_layers[int(m.group(1))] = m.group(2)
        elif m := _BUFFER.match(rest):
            _add(self.kv_buf, m.group(1), m.group(3))  # summed: an SWA model has two caches
        elif m := _KV_TYPES.search(rest):
            self.kv_types = (m.group(1).lower(), m.group(2).lower())
        return True

    def _state_line(self, head: str, rest: str) -> bool:
        """A recurrent state's buffer (llama_memory_recurrent: "CUDA0 RS buffer size")."""
        if not head.startswith("llama_memory_recurrent"):
            return False
        if (m := _BUFFER.match(rest)) and m.group(2) == "RS ":
            _add(self.state_buf, m.group(1), m.group(3))
        return True

    def _context_line(self, head: str, rest: str) -> bool:
        """A new context (its evidence starts over), its sizes and flash attention setting."""
        if head not in _CONTEXT_HEADS:
            return False
        if "constructing llama_context" in rest:
            self.kv_layers, self.kv_buf, self.compute_buf, self.state_buf = {}, {}, {}, {}
            self.ctx, self.flash, self.kv_types = {}, None, None
        elif m := _CTX_INT.match(rest):
            self.ctx[m.group(1)] = int(m.group(2))
        elif m := _FLASH.match(rest):
            self.flash = m.group(1).lower()
        else:
            return False
        return True

    def _device_or_buffer_line(self, line: str, colon: bool, rest: str) -> None:
        """A CUDA device line, a compute buffer, or an older log's KV types."""
        if line.startswith("tensor ") and (m := _OVERRIDDEN.match(line)):
            self.overridden[m.group(1)] = m.group(2)
        elif line.startswith("  Device ") and (m := DEVICE_LINE.match(line)):
            self.devices[int(m.group(1))] = m.group(2).strip()
        elif colon and "compute buffer size" in rest and (m := _BUFFER.match(rest)):
            _add(self.compute_buf, m.group(1), m.group(3), replace=True)
        elif colon and "KV self size" in rest and (m := _KV_TYPES.search(rest)):
            self.kv_types = (m.group(1).lower(), m.group(2).lower())

    def _failure_line(self, line: str) -> None:
        """Keep a line that reports a failure (once, up to _MAX_ERRORS)."""
        if (len(self.errors) < _MAX_ERRORS and _FAILURE.search(line)
                and not line.startswith(_NOT_FAILURES) and line.strip() not in self.errors):
            self.errors.append(line.strip())

    def evidence(self, text: str) -> PlacementEvidence:
        """The evidence read, with the build's system-info line of ``text`` and per-GPU sums."""
        offloaded = self.offloaded
        ev = PlacementEvidence(
            cuda_devices=[self.devices[i] for i in sorted(self.devices)],
            model_devices=self.model_devices,
            layer_devices=self.layers,
            overridden=self.overridden,
            offloaded_layers=offloaded[0] if offloaded else None,
            total_layers=offloaded[1] if offloaded else None,
            kv_layer_devices=self.kv_layers,
            model_buffers_mib=self.model_buf,
            kv_buffers_mib=self.kv_buf,
            compute_buffers_mib=self.compute_buf,
            state_buffers_mib=self.state_buf,
            flash_attn=self.flash,
            load_mode=self.load_mode,
            n_ctx=self.ctx.get("n_ctx"),
            n_batch=self.ctx.get("n_batch"),
            n_ubatch=self.ctx.get("n_ubatch"),
            kv_types=self.kv_types,
            build=find_system_info(text),
            errors=self.errors,
            is_load_log=self.is_load,
        )
        return ev.model_copy(update={"per_gpu": per_device(ev)})


def _add(into: dict[str, float], name: str, mib: str, replace: bool = False) -> None:
    with suppress(ValueError):  # "1.2.3" cannot be a size; leave the buffer out rather than fail
        into[name] = round((0.0 if replace else into.get(name, 0.0)) + float(mib), 4)


def expect(spec: TrialSpec, workload: Workload | None = None,
           build: str | None = None) -> Expectation:
    """What the load log of ``spec`` must show: each setting's declared proof
    (``tuner.settings``), the workload's context size, the build's variant."""
    return Expectation(**settings.expectation(spec, workload), build=build)


class Verdict(Frozen):
    verified: bool
    reasons: list[str] = Field(default_factory=list)
    summary: str


_FA_ON = {"enabled", "1", "true", "on", "yes"}
_FA_OFF = {"disabled", "0", "false", "off", "no"}


def verify(evidence: PlacementEvidence, expectation: Expectation,
           build: BuildFlags | None = None) -> Verdict:
    """Check the evidence against the expectation. ``build`` is what the worker read from
    ``llama_print_system_info()``; without it the system-info line in the log is used. Each
    mismatch becomes one short sentence; anything asked for that the log does not show counts
    as a mismatch, since the point is proof."""
    flags = build if build is not None else evidence.build
    reasons: list[str] = []
    if not evidence.layer_devices:
        reasons.append("no layer assignments in the log")
    if expectation.device == "cuda":
        reasons += _cuda_reasons(evidence, expectation, flags)
    else:
        reasons += _cpu_reasons(evidence)
    if (expectation.build is not None and flags is not None
            and (got := variant_of(flags)) != expectation.build):
        reasons.append(f"expected build {expectation.build}, library reports {got}")
    reasons += _context_reasons(evidence, expectation)
    reasons += load_mode_reasons(evidence, expectation.load_mode)
    ex = expectation
    reasons += experts_reasons(evidence, ex.n_cpu_moe,
                               part_layer(evidence, ex.ffn_on_host, ex.n_gpu_layers, ex.n_cpu_moe))
    reasons += ffn_reasons(evidence, ex.ffn_on_host, ex.n_gpu_layers, ex.n_cpu_moe)
    return Verdict(verified=not reasons, reasons=reasons, summary=summarize(evidence, flags))


def load_mode_reasons(ev: PlacementEvidence, want: str | None) -> list[str]:
    """Whether the load read the weights as asked: the log's load mode is the one asked, and a
    log that names none (a release before the load modes, which always mapped the file) proves
    only the default, mmap."""
    if want is None or ev.load_mode == want or (ev.load_mode is None and want == "mmap"):
        return []
    if ev.load_mode is None:
        return [f"the log does not show the load mode (expected {want})"]
    return [f"load mode {ev.load_mode} in the log, expected {want}"]


def experts_reasons(ev: PlacementEvidence, n_cpu_moe: int,
                    part_layer: int | None = None) -> list[str]:
    """Whether the tensors overridden are the expert weights of the first ``n_cpu_moe`` layers,
    in host memory, and nothing else: the layers overridden run up to ``n_cpu_moe`` - 1 without
    a gap (a model's leading dense layers have no experts to move). ``part_layer``: the layer
    whose FFN part ffn_on_host keeps on the host, experts among it (ffn_reasons judges it)."""
    out: list[str] = []
    layers: set[int] = set()
    for name, buft in sorted(ev.overridden.items()):
        il = _expert_layer(name)
        if il is None or il == part_layer:
            continue  # ffn_reasons' to judge
        if is_cuda_device(buft):
            out.append(f"expert tensor {name} overridden to {buft}, not to host memory")
        else:
            layers.add(il)
    if n_cpu_moe <= 0:
        if layers:
            out.append(f"the expert weights of {len(layers)} layers in host memory; the trial "
                       "asked for none")
        return out
    if not layers:
        out.append(f"no expert weights overridden to host memory; the trial asked for those "
                   f"of the first {n_cpu_moe} layers (no 'buffer type overridden' line)")
    elif max(layers) != n_cpu_moe - 1 or layers != set(range(min(layers), n_cpu_moe)):
        out.append(f"the expert weights of {_layers(layers)} in host memory; the trial "
                   f"asked for those of {_layers(set(range(n_cpu_moe)))}")
    return out


def part_layer(ev: PlacementEvidence, part: str, n_gpu_layers: int,
               n_cpu_moe: int) -> int | None:
    """The layer whose FFN matrices ``part`` were asked on the host, by the log's layer count:
    where llama.cpp starts the GPU's layers for ``n_gpu_layers``, or the layer after the
    first ``n_cpu_moe`` layers' experts (tuner.settings.ffn_host_layer); None for no part or
    where the log cannot tell."""
    total = layer_count(ev)
    if not part or not total:
        return None
    return settings.ffn_host_layer(total - 1, n_gpu_layers, n_cpu_moe)


def ffn_reasons(ev: PlacementEvidence, part: str, n_gpu_layers: int,
                n_cpu_moe: int = 0) -> list[str]:
    """Whether the tensors overridden that experts_reasons does not judge (no expert weight, or
    of the part's layer) are the FFN matrices ``part`` (tuner.settings.FFN_ON_HOST) of that
    layer (part_layer), in host memory, and nothing else (for no ``part``: none at all): every
    one matches the part's pattern, and each matrix it names is there (gate and up may be one
    fused gate_up; a mixture of experts' layer moves its experts of them, ``_exps``)."""
    layer = part_layer(ev, part, n_gpu_layers, n_cpu_moe)
    out: list[str] = []
    if part and layer is None:
        out.append(f"ffn_on_host {part}: the log shows no layer for it (n_gpu_layers "
                   f"{n_gpu_layers}, n_cpu_moe {n_cpu_moe}, {len(ev.layer_devices)} layers)")
    pattern = re.compile(settings.ffn_host_pattern(layer, part)) if layer is not None else None
    found: set[str] = set()
    for name, buft in sorted(ev.overridden.items()):
        il = _expert_layer(name)
        if il is not None and il != layer:
            continue  # experts_reasons' to judge
        if pattern is None or not pattern.search(name):
            asked = f"for the FFN matrices {part} of layer {layer}" if part else "no override of it"
            out.append(f"tensor {name} overridden to {buft}: the trial asked {asked}")
        elif is_cuda_device(buft):
            out.append(f"FFN tensor {name} overridden to {buft}, not to host memory")
        elif m := _FFN_MATRIX.match(name):
            found.add(m.group(2))
    if pattern is not None and not _has_part(found, part):
        out.append(f"the FFN matrices {_matrices(found) or 'none'} of layer {layer} in "
                   f"host memory; the trial asked for {part}")
    return out


_FFN_MATRIX = re.compile(r"^blk\.(\d+)\.ffn_(\w+?)\.")  # layer, matrix
_EXPERT_SUFFIXES = ("_exps", "_chexps", "_shexp")


def _kind(matrix: str) -> str:
    """"down_exps" -> "down": the FFN matrix an expert or shared-expert tensor holds."""
    for suffix in _EXPERT_SUFFIXES:
        if matrix.endswith(suffix):
            return matrix[: -len(suffix)]
    return matrix


def _has_part(found: set[str], part: str) -> bool:
    """Whether the matrices ``found`` hold every one ``part`` names ("gate+down": gate, or a
    fused gate_up, and down)."""
    kinds = {_kind(m) for m in found}
    return all(k in kinds or (k in ("gate", "up") and "gate_up" in kinds)
               for k in part.split("+"))


def _matrices(found: set[str]) -> str:
    """{"down", "gate"} -> "gate+down", as FFN_ON_HOST names them."""
    order = ("gate", "gate_up", "up", "down")

    def rank(matrix: str) -> tuple[int, str]:
        kind = _kind(matrix)
        return (order.index(kind) if kind in order else len(order), matrix)

    return "+".join(sorted(found, key=rank))


def _layers(layers: set[int]) -> str:
    """"layer 3", "layers 0-2, 5"."""
    return f"layer{'s' if len(layers) > 1 else ''} {_ranges(layers)}"


def _ranges(layers: set[int]) -> str:
    """{0, 1, 2, 5} -> "0-2, 5"."""
    out: list[list[int]] = []
    run: list[int] = []
    for il in sorted(layers):
        if run and il != run[-1] + 1:
            out.append(run)
            run = []
        run.append(il)
    out.append(run)
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in out if r)


def layer_count(ev: PlacementEvidence) -> int | None:
    """The layers the log shows, the output layer among them: the "offloaded N/M" line's M,
    else the layers assigned; None when it shows none."""
    return ev.total_layers if ev.total_layers is not None else (len(ev.layer_devices) or None)


def asks_every_layer(n_gpu_layers: int, total: int | None) -> bool:
    """Whether ``n_gpu_layers`` asks for every one of ``total`` layers (the output layer among
    them; None: unknown, so only -1 does)."""
    return n_gpu_layers < 0 or (total is not None and n_gpu_layers >= total)


def is_full_offload(ev: PlacementEvidence, n_gpu_layers: int) -> bool:
    """Whether ``n_gpu_layers`` asks for every layer of the model the log shows."""
    return asks_every_layer(n_gpu_layers, layer_count(ev))


def _cuda_reasons(ev: PlacementEvidence, ex: Expectation, flags: BuildFlags | None) -> list[str]:
    out: list[str] = []
    if flags is not None and not flags.cuda:
        out.append("the library has no CUDA backend (a CPU-only build)")
    layers = ev.layer_devices
    total = layer_count(ev)
    full = is_full_offload(ev, ex.n_gpu_layers)
    if full:
        want = total
    else:
        want = ex.n_gpu_layers if total is None else min(ex.n_gpu_layers, total)
    if layers and (off := {i: d for i, d in layers.items() if not is_cuda_device(d)}) and full:
        out.append(f"{len(off)} of {len(layers)} layers on {_where(off)}, not on the GPU")
    if layers and not full:
        on_gpu = sum(1 for d in layers.values() if is_cuda_device(d))
        if on_gpu != want:
            out.append(f"{on_gpu} layers assigned to a CUDA device, expected {want}")
        elif wrong := partial_layer_reason(layers, want, total):
            out.append(wrong)
    if ev.offloaded_layers is None:
        if layers and want:
            out.append("no 'offloaded N/M layers to GPU' line in the log")
    elif ev.offloaded_layers != want:
        out.append(f"llama.cpp offloaded {ev.offloaded_layers}/{ev.total_layers} layers to GPU, "
                   f"expected {want}/{ev.total_layers}")
    out += split_reasons(ev, ex, full)
    kv = ev.kv_layer_devices
    off_kv = {i: d for i, d in kv.items() if not is_cuda_device(d)} if full else {}
    if off_kv:
        out.append(f"KV cache of {len(off_kv)} of {len(kv)} layers on {_where(off_kv)}, "
                   "not on the GPU")
    elif (not full or is_split(ev)) and (moved := {i: d for i, d in kv.items() if i in layers and layers[i] != d}):
        out.append(f"KV cache of {len(moved)} layers on {_where(moved)}, away from their "
                   "layer's device")
    for name, mib in sorted(ev.kv_buffers_mib.items()):
        if full and not off_kv and mib > 0 and not is_cuda_device(name):
            out.append(f"a {mib:.2f} MiB KV buffer on {name}, not on the GPU")
    for name, mib in sorted(ev.state_buffers_mib.items()):
        if full and mib > 0 and not is_cuda_device(name):
            out.append(f"a {mib:.2f} MiB recurrent-state buffer on {name}, not on the GPU")
    if not kv and not ev.kv_buffers_mib and not ev.state_buffers_mib:
        out.append("no KV cache placement in the log")
    return out


def partial_layer_reason(layers: dict[int, str], want: int, total: int | None) -> str | None:
    """Why a partial offload's layers are not the ones llama.cpp assigns for ``want``: the
    last ``want`` of the ``total`` (repeating layers and the output layer, whose index is the
    last) on CUDA, every earlier one on the CPU (``i_gpu_start = n_layer + 1 - N``)."""
    count = total if total is not None else len(layers)
    start = count - want
    misplaced = {i: d for i, d in layers.items()
                 if is_cuda_device(d) != (i >= start) or (i < start and not is_cpu_device(d))}
    if not misplaced:
        return None
    return (f"{_where(misplaced)} not where llama.cpp puts {want} GPU layers "
            f"(layers {start}-{count - 1} on CUDA, the output layer {count - 1} among them; "
            f"the rest on the CPU)")


def _cpu_reasons(ev: PlacementEvidence) -> list[str]:
    out: list[str] = []
    if off := {i: d for i, d in ev.layer_devices.items() if not is_cpu_device(d)}:
        out.append(f"{len(off)} of {len(ev.layer_devices)} layers on {_where(off)}, "
                   "expected all on CPU")
    if ev.offloaded_layers:
        out.append(f"llama.cpp offloaded {ev.offloaded_layers}/{ev.total_layers} layers to GPU, "
                   "expected 0")
    if off_kv := {i: d for i, d in ev.kv_layer_devices.items() if not is_cpu_device(d)}:
        out.append(f"KV cache of {len(off_kv)} of {len(ev.kv_layer_devices)} layers on "
                   f"{_where(off_kv)}, expected CPU")
    for kind, buffers in (("KV", ev.kv_buffers_mib), ("compute", ev.compute_buffers_mib),
                          ("recurrent-state", ev.state_buffers_mib)):
        for name, mib in sorted(buffers.items()):
            if mib > 0 and is_cuda_device(name):
                out.append(f"a {mib:.2f} MiB {kind} buffer on {name}: the GPU still takes part "
                           "(hide it with CUDA_VISIBLE_DEVICES= for a CPU run)")
    return out


def _size_reasons(ev: PlacementEvidence, ex: Expectation) -> list[str]:
    """n_ctx / n_batch / n_ubatch of the log's last context against what was asked."""
    out: list[str] = []
    if ex.n_ctx is not None:
        if ev.n_ctx is None:
            out.append(f"the log does not show the context size (expected n_ctx {ex.n_ctx})")
        elif ev.n_ctx < ex.n_ctx:
            out.append(f"context size n_ctx {ev.n_ctx} in the log, expected {ex.n_ctx}")
    batch = None
    if ex.n_batch is not None:
        if ev.n_batch is None:
            out.append(f"the log does not show n_batch (expected {ex.n_batch})")
        else:
            cap = ex.n_ctx if ex.n_ctx is not None else ev.n_ctx
            batch = min(ex.n_batch, cap) if cap else ex.n_batch
            # Without the asked context size, a batch clamped below the shown one is accepted.
            clamped = ex.n_ctx is None and ev.n_batch < ex.n_batch
            if ev.n_batch != batch and not clamped:
                out.append(f"n_batch {ev.n_batch} in the log, expected {batch}")
            batch = ev.n_batch
    if ex.n_ubatch is not None:
        if ev.n_ubatch is None:
            out.append(f"the log does not show n_ubatch (expected {ex.n_ubatch})")
        elif ev.n_ubatch != (want := min(ex.n_ubatch, batch or ex.n_ubatch)):
            out.append(f"n_ubatch {ev.n_ubatch} in the log, expected {want}")
    return out


def _context_reasons(ev: PlacementEvidence, ex: Expectation) -> list[str]:
    out: list[str] = _size_reasons(ev, ex)
    # A recurrent model keeps no KV cache (only a state): no cache type to show
    stateful = bool(ev.state_buffers_mib) and not ev.kv_buffers_mib and ev.kv_types is None
    for half, want, index in (("K", ex.type_k, 0), ("V", ex.type_v, 1)):
        if want is None or stateful:
            continue
        if ev.kv_types is None:
            out.append(f"the log does not show the {half} cache type (expected {want})")
        elif ev.kv_types[index] != want.lower():
            out.append(f"{half} cache is {ev.kv_types[index]}, expected {want}")
    if ex.flash_attn is not None:
        wanted = "enabled" if ex.flash_attn else "disabled"
        seen = (ev.flash_attn or "").lower()
        state = True if seen in _FA_ON else False if seen in _FA_OFF else None
        if state is None:
            what = f"flash_attn = {seen}" if seen else "no flash_attn line"
            out.append(f"the log does not show whether flash attention ran ({what}), "
                       f"expected {wanted}")
        elif state != ex.flash_attn:
            out.append(f"flash attention {seen}, expected {wanted}")
    return out


def _where(placed: dict[int, str]) -> str:
    """"CPU (layers 0-2)" / "CPU (layers 0, 5), CUDA1 (layer 7)": devices and their layers."""
    by_device: dict[str, list[int]] = {}
    for i in sorted(placed):
        by_device.setdefault(placed[i], []).append(i)
    return ", ".join(f"{d} ({_span(ix)})" for d, ix in by_device.items())


def _span(ix: list[int]) -> str:
    if len(ix) == 1:
        return f"layer {ix[0]}"
    if ix == list(range(ix[0], ix[-1] + 1)):
        return f"layers {ix[0]}-{ix[-1]}"
    shown = ", ".join(str(i) for i in ix[:8])
    return f"layers {shown}{', ...' if len(ix) > 8 else ''}"


def summarize(evidence: PlacementEvidence, build: BuildFlags | None = None) -> str:
    """One line: "33/33 layers on CUDA0, KV cache on CUDA0, build default"; split across GPUs,
    what each holds: "layers: CUDA0 17, CUDA1 16; KV: CUDA0 16, CUDA1 16; MiB ...; build ..."."""
    flags = build if build is not None else evidence.build
    if is_split(evidence):
        return f"{split_summary(evidence)}; build {variant_of(flags) if flags else 'unknown'}"
    counts = Counter(evidence.layer_devices.values())
    total = evidence.total_layers or len(evidence.layer_devices)
    if counts:
        layers = ", ".join(f"{n}/{total} layers on {d}" for d, n in _gpu_first(counts))
    else:
        layers = "no layer assignments"
    kv_counts = Counter(evidence.kv_layer_devices.values())
    if len(kv_counts) == 1:
        kv = f"KV cache on {next(iter(kv_counts))}"
    elif kv_counts:
        kv = "KV cache on " + ", ".join(f"{d} ({n} layers)" for d, n in _gpu_first(kv_counts))
    elif evidence.kv_buffers_mib:
        kv = "KV cache on " + ", ".join(sorted(evidence.kv_buffers_mib))
    elif evidence.state_buffers_mib:
        kv = "no KV cache, recurrent state on " + ", ".join(sorted(evidence.state_buffers_mib))
    else:
        kv = "KV cache not in the log"
    mode = f", load mode {evidence.load_mode}" if evidence.load_mode not in (None, "mmap") else ""
    return (f"{layers}{_moved_text(evidence)}, {kv}{mode}, "
            f"build {variant_of(flags) if flags else 'unknown'}")


def _moved_text(ev: PlacementEvidence) -> str:
    """", experts of layers 0-2 on CPU" for the layers whose expert weights an override placed
    whole (n_cpu_moe), ", FFN gate+down of layer 14 on CPU" for a layer with part of its FFN
    placed (ffn_on_host)."""
    by_layer: dict[int, tuple[set[str], set[str]]] = {}
    for name, buft in ev.overridden.items():
        if m := _FFN_MATRIX.match(name):
            mats, bufts = by_layer.setdefault(int(m.group(1)), (set(), set()))
            mats.add(m.group(2))
            bufts.add(buft)
    whole = {il: bufts for il, (mats, bufts) in by_layer.items()
             if all(_expert_layer(f"blk.{il}.ffn_{x}.") is not None for x in mats)
             and _has_part(mats, "gate+up+down")}
    out = ""
    if whole:
        out = (f", experts of {_layers(set(whole))} on "
               f"{', '.join(sorted(set().union(*whole.values())))}")
    return out + "".join(f", FFN {_matrices(mats)} of layer {il} on {', '.join(sorted(bufts))}"
                         for il, (mats, bufts) in sorted(by_layer.items()) if il not in whole)


def experts_in_log(ev: PlacementEvidence) -> int:
    """The n_cpu_moe a log's overrides stand for (its highest layer with experts overridden,
    plus one; 0 for none): what a user's own load asked, for ``tuner doctor``."""
    moved = _moved_experts(ev)
    return max(moved) + 1 if moved else 0


def _moved_experts(ev: PlacementEvidence) -> dict[int, str]:
    """Layer -> buffer type of the expert tensors an override placed."""
    return {il: buft for name, buft in ev.overridden.items()
            if (il := _expert_layer(name)) is not None}


def _expert_layer(name: str) -> int | None:
    """The layer of an expert weight's tensor ("blk.3.ffn_up_exps.weight" -> 3); None for any
    other tensor."""
    m = _BLOCK.match(name)
    return int(m.group(1)) if m and EXPERT_TENSOR.search(name) else None


def _gpu_first(counts: Counter[str]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (not is_cuda_device(item[0]), item[0]))
