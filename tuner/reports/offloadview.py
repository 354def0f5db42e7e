"""The report's lines for a winner that keeps layers on the host (partial offload): the memory
plan's prediction beside what llama.cpp's load log measured, per device, and why fewer layers
won (more on the GPU measured slower, or out of memory / not fitting the plan); with experts
on the host (n_cpu_moe), why more of them stayed there; with part of a layer's FFN on the host
(ffn_on_host), the whole layer and the parts that keep more on the GPU count as more."""

from __future__ import annotations

from pathlib import Path

from tuner.errors import TunerError
from tuner.evidence.placement import asks_every_layer, is_cuda_device
from tuner.models import memplan
from tuner.results.records import TrialRecord, TrialState
from tuner.search.offload import FFN_PARTS, placement_text, spec_context


def _measured(r: TrialRecord) -> str:
    parts = []
    for dev in sorted({d for kind in r.buffers_mib.values() for d in kind},
                      key=lambda d: (not is_cuda_device(d), d)):
        figs = [f"{kind} {r.buffers_mib[kind][dev]:,.0f}" for kind in ("model", "kv", "compute")
                if dev in r.buffers_mib.get(kind, {})]
        parts.append(f"{dev} {' + '.join(figs)}")
    return "; ".join(parts) or "no buffers in the log"


def _predicted(r: TrialRecord, model: str | None) -> str | None:
    if model is None or not Path(model).is_file():
        return None
    try:
        layout = memplan.read_layout(model)
    except (ValueError, OSError, TunerError):  # changed or damaged since: no prediction
        return None
    p = memplan.place(layout, r.spec.model.n_gpu_layers, spec_context(r.spec, r.workload))
    mib = memplan.MIB
    return (f"GPU model {p.gpu.weights / mib:,.0f} + kv {p.gpu.kv / mib:,.0f} + compute "
            f"{p.gpu.compute / mib:,.0f}; host model {p.host.weights / mib:,.0f} + kv "
            f"{p.host.kv / mib:,.0f} + compute {p.host.compute / mib:,.0f}")


def _where(r: TrialRecord) -> str:
    return placement_text(r.spec).replace("n_gpu_layers", "ngl")


def _on_gpu(r: TrialRecord, total: int | None) -> tuple[float, int, int]:
    """How much of the model a trial kept on the GPU, to compare: its layers (every one: past
    any count), then the fewer layers' experts on the host, then how much of the FFN of the
    layer ffn_on_host splits (none split: the most)."""
    m = r.spec.model
    n = float("inf") if asks_every_layer(m.n_gpu_layers, total or None) else float(m.n_gpu_layers)
    return n, -m.n_cpu_moe, FFN_PARTS.index(m.ffn_on_host) if m.ffn_on_host else len(FFN_PARTS)


def offload_lines(winner: TrialRecord | None, records: list[TrialRecord]) -> list[str]:
    """Nothing when the winner has every layer and all its weights on the GPU (or runs on the
    CPU). A winner with experts on the host (n_cpu_moe) is set against the trials that kept
    fewer experts there; one with layers on the host, against those with more layers on the
    GPU (experts on the host included)."""
    if winner is None or winner.spec.model.device != "cuda":
        return []
    ngl, k = winner.spec.model.n_gpu_layers, winner.spec.model.n_cpu_moe
    part = winner.spec.model.ffn_on_host
    place = winner.placement or {}
    total = place.get("total_layers")
    counts = total if isinstance(total, int) else None
    full = asks_every_layer(ngl, counts)
    if full and not k and not part:
        return []
    of = f"/{total}" if isinstance(total, int) else ""
    model = winner.environment.model_path if winner.environment else None
    mine = _on_gpu(winner, counts)
    if k:
        head = (f"every layer on the GPU, the expert weights of its first {k} in host memory "
                f"(n_cpu_moe {k}" + (f"), and the FFN {part} of layer {k} (ffn_on_host {part})"
                                     if part else ")"))
        rivals = [r for r in records if r.spec.model.n_gpu_layers < 0
                  and _on_gpu(r, counts) > mine]
        what = "fewer experts on the host"
    else:
        n = "every layer" if full else f"{ngl}{of} layers"
        head = f"{n} on the GPU (partial offload)" if not part else (
            f"{n} on the GPU, the FFN {part} of the first of them in host memory "
            f"(partial offload, ffn_on_host {part})")
        rivals = [r for r in records if _on_gpu(r, counts) > mine]
        what = "more on the GPU"
    out = [f"{head}; measured MiB: {_measured(winner)}"]
    if (pred := _predicted(winner, model)) is not None:
        out.append(f"memory plan MiB: {pred}")
    slower = [r for r in rivals if r.usable and r.objective is not None]
    failed = [r for r in rivals if r.state is TrialState.INFEASIBLE]
    if slower:
        best = min(slower, key=lambda r: r.objective or 0.0)
        out.append(f"{what} measured slower: #{best.number} {_where(best)}"
                   f" {best.objective:.3f} s/request against {winner.objective or 0:.3f} s")
    if failed:
        tried = sorted({_where(r) for r in failed})
        out.append(f"{what} did not fit: {', '.join(tried)} infeasible "
                   f"({failed[0].error or 'out of memory'})")
    return out
