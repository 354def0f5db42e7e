"""Where every operation of llama.cpp's compute graph ran, read from the backend scheduler's own
report, and whether that is what was asked for.

The load log proves where each *layer's weights* live; it does not prove where each operation
runs. The scheduler may still run an operation of a CUDA layer on the CPU when the CUDA backend
lacks a kernel for it (a flash-attention op for some K/V type pairs, for example), and such a
trial measures a CPU hop on every token. With ``GGML_SCHED_DEBUG=2`` in the environment when a
context (and so its scheduler, ``ggml_backend_sched_new``) is created, ggml prints, through the
log callback at debug level, each graph it splits (``ggml_backend_sched_print_assignments``):

    ## SPLIT #0: CPU # 0 inputs
    node #  0 (  GET_ROWS):                 embd (   8K) [  CPU         ] use=2,c=1: ...
    ## SPLIT #1: CUDA0 # 7 inputs: [embd (   8K)] [inp_pos (   0K)] ...
    node #  1 (  RMS_NORM):               norm-0 (   8K) [CUDA0         ] use=1,c=1: ...

Widths are fixed by the printf format: the op is cut to 10 characters (``FLASH_ATTN`` for
``FLASH_ATTN_EXT``), names to 20, a node's backend to 5; the split header carries the backend's
full name, and a node runs on its split's backend. One report is printed per reserved graph at
context creation and per decode that builds a new graph, so a log holds many; every one is
checked. Other log lines may sit between them.

By design one kind of node stays on the host with full offload: the input embedding lookup, a
``GET_ROWS`` of an input-layer weight (llama-arch.cpp gives the input layer, kept in host
memory, exactly these: token_embd, position_embd, token_types, per_layer_token_embd).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Literal

from pydantic import Field

from tuner.evidence.placement import is_cuda_device
from tuner.specs import Frozen

_SPLIT = re.compile(r"^## SPLIT #(\d+): (\S+) # (\d+) inputs")
_NODE = re.compile(r"^node #\s*(\d+) \((.{10})\): (.{20}) \((.{5})\) \[(.{5}) .{8}\] "
                   r"use=\d+,c=\d+:(.*)$")
_SOURCE = re.compile(r" (.{20}) \((.{5})\) \[(.{5}) .{8}\]")
_RESERVE = re.compile(r"graph_reserve: reserving a graph for ubatch with n_tokens =\s*(\d+)")
_INPUT_WEIGHT = re.compile(r"^(token_embd|position_embd|token_types|per_layer_token_embd)(\.|$)")
_LAYER_OF_NODE = re.compile(r"-(\d+)$")  # llama.cpp names a layer's tensors "Kcur-3"
_LAYER_OF_SOURCE = re.compile(r"^blk\.(\d+)\.|_l(\d+)(?:\s|$)")  # weights, KV cache views
_HOST_BACKENDS = ("CPU", "BLAS")  # ggml backends that run on the host processor
MAX_LISTED = 20  # nodes named in a stored summary; the count is always complete
MAX_REASONS = 5  # op groups given a sentence each

REPORT_ENV = "GGML_SCHED_DEBUG"
REPORT_HINT = ("set GGML_SCHED_DEBUG=2 in the environment before the context is created to make "
               "llama.cpp print where each operation runs")


class OpNode(Frozen):
    """One graph node as the scheduler printed it (op and names cut to the printed width)."""

    index: int
    op: str
    name: str
    backend: str  # where it ran: its split's backend (see _backend)
    sources: list[str] = Field(default_factory=list)

    @property
    def layer(self) -> int | None:
        """The model layer the node belongs to, from llama.cpp's naming ("Kcur-3", "blk.3.",
        "cache_k_l3"), else from a source's ("node_9" computed from "Vcur-0 (reshaped)", but
        not from a layer's output, "l_out-3", which the next layer or the output stage reads);
        None for nodes outside the repeating layers."""
        if m := _LAYER_OF_NODE.search(self.name):
            return int(m.group(1))
        for name in self.sources:
            if m := _LAYER_OF_SOURCE.search(name):
                return int(m.group(1) or m.group(2))
        for name in self.sources:  # a layer's output ("l_out-3") feeds the next, or the head
            base = name.split(" (")[0].strip()  # "Vcur-0 (reshaped)": ggml's view suffixes
            if not base.startswith("l_out") and (m := _LAYER_OF_NODE.search(base)):
                return int(m.group(1))
        return None

    @property
    def is_input_lookup(self) -> bool:
        """The input embedding lookup that llama.cpp keeps on the host by design."""
        return self.op == "GET_ROWS" and bool(self.sources) and bool(
            _INPUT_WEIGHT.match(self.sources[0]))


class OpSplit(Frozen):
    index: int
    backend: str
    n_inputs: int
    nodes: list[OpNode] = Field(default_factory=list)


class OpReport(Frozen):
    """One graph's assignment. ``reserve_tokens``: the ubatch size of a graph reserved at
    context creation; None for a graph llama.cpp built to decode."""

    splits: list[OpSplit]
    reserve_tokens: int | None = None

    @property
    def nodes(self) -> list[OpNode]:
        return [n for s in self.splits for n in s.nodes]


def report_lines(text: str) -> str:
    """The scheduler reports in ``text`` (with the reserve line that says which graph each is),
    each distinct report once: what a worker keeps and sends. llama.cpp reserves the same graph
    several times at context creation, and identical reports prove nothing more."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if _RESERVE.search(line) or (line.startswith("## SPLIT #0:")
                                     and not (blocks and _is_reserve_only(blocks[-1]))):
            blocks.append([line])
        elif line.startswith(("## SPLIT #", "node #")) and blocks:
            blocks[-1].append(line)
    seen: set[str] = set()
    out: list[str] = []
    for block in blocks:
        chunk = "".join(f"{line}\n" for line in block)
        if chunk not in seen:
            seen.add(chunk)
            out.append(chunk)
    return "".join(out)


def _is_reserve_only(block: list[str]) -> bool:
    return len(block) == 1 and bool(_RESERVE.search(block[0]))


def parse_op_reports(text: str) -> list[OpReport]:
    """Every scheduler report in a log, in order. Never raises: lines that do not parse are
    skipped, and a node line with no split header before it belongs to no report."""
    reports: list[OpReport] = []
    splits: list[OpSplit] = []
    nodes: list[OpNode] = []
    reserve: int | None = None
    pending_reserve: int | None = None

    def close_split() -> None:
        if splits:
            splits[-1] = splits[-1].model_copy(update={"nodes": list(nodes)})
        nodes.clear()

    def close_report() -> None:
        close_split()
        if splits:
            reports.append(OpReport(splits=list(splits), reserve_tokens=reserve))
        splits.clear()

    for line in text.splitlines():
        if m := _RESERVE.search(line):
            pending_reserve = int(m.group(1))
        elif m := _SPLIT.match(line):
            index = int(m.group(1))
            if index == 0 or not splits:
                close_report()
                reserve, pending_reserve = pending_reserve, None
            close_split()
            splits.append(OpSplit(index=index, backend=m.group(2), n_inputs=int(m.group(3))))
        elif splits and (m := _NODE.match(line)):
            sources = [s.group(1).strip() for s in _SOURCE.finditer(m.group(6))]
            nodes.append(OpNode(index=int(m.group(1)), op=m.group(2).strip(),
                                name=m.group(3).strip(),
                                backend=_backend(m.group(5), splits[-1].backend),
                                sources=sources))
    close_report()
    return reports


def _backend(printed: str, split: str) -> str:
    """Where a node ran: its split's backend, full name, when the node line (cut to 5
    characters) agrees; otherwise what the node line says ("CPU", "NULL"), so that a garbled
    or disagreeing line is never read as a node on the device."""
    printed = printed.strip()
    return split if printed == split[:5] else printed


class OpSummary(Frozen):
    """The operation-level evidence of a trial, compact enough for every record.

    ``verified`` True: every node ran where asked; False: some did not, or the proof is missing
    where it is required; None: not checked (a partial offload, or no report where none is
    required). ``off_device`` names the nodes that ran elsewhere (at most MAX_LISTED)."""

    reports: int = 0
    nodes: int = 0  # nodes of the last report (the graph llama.cpp built last)
    splits: int = 0
    backends: dict[str, int] = Field(default_factory=dict)  # nodes per backend, last report
    expected_host: list[str] = Field(default_factory=list)  # by-design host nodes seen
    off_device: list[str] = Field(default_factory=list)
    off_device_count: int = 0
    verified: bool | None = None
    reasons: list[str] = Field(default_factory=list)
    summary: str = ""


def check_ops(text: str | None, device: Literal["cuda", "cpu"], full_offload: bool = True,
              required: bool = True, error: str | None = None,
              experts_on_host: int = 0, weights_on_host: str = "experts") -> OpSummary:
    """Parse the scheduler reports in ``text`` and judge them. On CUDA with full offload every
    node must run on a CUDA backend except the input embedding lookup, and, with the experts
    of the first ``experts_on_host`` layers in host memory (n_cpu_moe), the nodes of those
    layers the scheduler runs beside them (the expert products and what it computes from
    them on the host before the next GPU node); ``weights_on_host`` names those weights in the
    summary (a layer's FFN matrices kept on the host, ffn_on_host, at full offload: layer 0's);
    on the CPU every node must run on the host.
    ``required``: a missing report fails a CUDA check (a trial's proof) instead of leaving it
    unchecked (a user's saved log). ``error``: why the worker could not take the report, if it
    said."""
    reports = parse_op_reports(text or "")
    if not reports:
        return _no_report(device, full_offload, required, error)
    last = reports[-1]
    counts = Counter(n.backend for n in last.nodes)
    expected: dict[tuple[str, str], OpNode] = {}
    beside_experts: set[tuple[int, str, str]] = set()  # one entry per node, not per report
    off: dict[tuple[int, str, str, str], OpNode] = {}  # one entry per node, not per report
    for node in (n for r in reports for n in r.nodes):
        if device == "cuda":
            if is_cuda_device(node.backend):
                continue
            if node.is_input_lookup:
                expected.setdefault((node.op, node.sources[0]), node)
            elif node.layer is not None and node.layer < experts_on_host:
                beside_experts.add((node.index, node.op, node.name))
            elif full_offload:
                off.setdefault((node.index, node.op, node.name, node.backend), node)
        elif not node.backend.upper().startswith(_HOST_BACKENDS):
            off.setdefault((node.index, node.op, node.name, node.backend), node)
    checked = device == "cpu" or full_offload
    reasons = _reasons(list(off.values()), device) if checked else []
    where = ", ".join(f"{n} on {b}" for b, n in sorted(counts.items(), key=_device_first))
    n_splits = len(last.splits)
    summary = (f"ops: {len(last.nodes)} nodes in {n_splits} split{'s' if n_splits != 1 else ''} "
               f"({where})")
    if expected:
        summary += "; input embedding lookup on the host, as designed"
    if beside_experts:
        span = f"layers 0-{experts_on_host - 1}" if experts_on_host > 1 else "layer 0"
        summary += (f"; {len(beside_experts)} nodes of {span} on the host beside their "
                    f"{weights_on_host}, as asked")
    if off:
        where = "CUDA" if device == "cuda" else "the CPU"
        summary += f"; {len(off)} node{'s' if len(off) != 1 else ''} not on {where}"
    elif not checked:
        summary += "; not checked (partial offload)"
    if error:  # the reports taken before the failure still count
        summary += f"; proof cut short: {error}"
    return OpSummary(
        reports=len(reports), nodes=len(last.nodes), splits=len(last.splits),
        backends=dict(counts),
        expected_host=[f"{n.op} {n.name} <- {src} on {n.backend}"
                       for (_, src), n in expected.items()],
        off_device=[_describe(n) for n in list(off.values())[:MAX_LISTED]],
        off_device_count=len(off), verified=(not off) if checked else None,
        reasons=reasons, summary=summary)


def _no_report(device: str, full_offload: bool, required: bool, error: str | None) -> OpSummary:
    why = f" ({error})" if error else ""
    if device == "cuda" and full_offload and required:
        return OpSummary(verified=False, summary="ops: no scheduler report",
                         reasons=[f"no operation report from llama.cpp's scheduler{why}: where "
                                  "each operation ran is unproven"])
    return OpSummary(summary=f"ops: no scheduler report{why}")


def _reasons(off: list[OpNode], device: str) -> list[str]:
    """One short sentence per op and backend: "FLASH_ATTN (node_98, layer 2) runs on CPU"."""
    groups: dict[tuple[str, str], list[OpNode]] = {}
    for node in off:
        groups.setdefault((node.op, node.backend), []).append(node)
    want = "" if device == "cuda" else ", expected CPU"
    out = []
    for (op, backend), nodes in list(groups.items())[:MAX_REASONS]:
        if len(nodes) == 1:
            out.append(f"{op} ({_named(nodes[0])}) runs on {backend}{want}")
        else:
            names = ", ".join(n.name for n in nodes[:3]) + (", ..." if len(nodes) > 3 else "")
            layers = sorted({n.layer for n in nodes if n.layer is not None})
            span = f", layers {_span(layers)}" if layers else ""
            out.append(f"{op} runs on {backend} in {len(nodes)} nodes ({names}{span}){want}")
    if len(groups) > MAX_REASONS:
        out.append(f"and {len(groups) - MAX_REASONS} more ops off the expected device")
    return out


def _named(node: OpNode) -> str:
    """"ffn_up-5" names its layer already; "node_98" gets ", layer 2" from its inputs."""
    if node.layer is None or _LAYER_OF_NODE.search(node.name):
        return node.name
    return f"{node.name}, layer {node.layer}"


def _describe(node: OpNode) -> str:
    return f"{node.op} {_named(node)} on {node.backend}"


def _span(ix: list[int]) -> str:
    if len(ix) > 1 and ix == list(range(ix[0], ix[-1] + 1)):
        return f"{ix[0]}-{ix[-1]}"
    return ", ".join(str(i) for i in ix[:8]) + (", ..." if len(ix) > 8 else "")


def _device_first(item: tuple[str, int]) -> tuple[bool, str]:
    return (not is_cuda_device(item[0]), item[0])


def has_op_report(text: str) -> bool:
    return any(_SPLIT.match(line) for line in text.splitlines())

