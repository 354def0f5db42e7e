"""The report's lines for a winner that keeps layers on the host (partial offload): the memory
plan's prediction beside what llama.cpp's load log measured, per device, and why fewer layers
won (more layers measured slower, or out of memory / not fitting the plan)."""

from __future__ import annotations

from pathlib import Path

from tuner.errors import TunerError
from tuner.evidence.placement import is_cuda_device
from tuner.models import memplan
from tuner.results.records import TrialRecord, TrialState


def _measured(r: TrialRecord) -> str:
    parts = []
    for dev in sorted({d for kind in r.buffers_mib.values() for d in kind},
                      key=lambda d: (not is_cuda_device(d), d)):
        figs = [f"{kind} {r.buffers_mib[kind][dev]:,.0f}" for kind in ("model", "kv", "compute")
                if dev in r.buffers_mib.get(kind, {})]
        parts.append(f"{dev} {' + '.join(figs)}")
    return "; ".join(parts) or "no buffers in the log"


def _predicted(r: TrialRecord, model: str | None, n_ctx: int) -> str | None:
    if model is None or not Path(model).is_file():
        return None
    try:
        layout = memplan.read_layout(model)
    except (ValueError, OSError, TunerError):  # changed or damaged since: no prediction
        return None
    c = r.spec.context
    p = memplan.place(layout, r.spec.model.n_gpu_layers, memplan.Context(
        n_ctx=n_ctx, type_k=c.type_k, type_v=c.type_v, n_ubatch=c.n_ubatch,
        flash_attn=c.flash_attn, op_offload=c.op_offload))
    mib = memplan.MIB
    return (f"GPU model {p.gpu.weights / mib:,.0f} + kv {p.gpu.kv / mib:,.0f} + compute "
            f"{p.gpu.compute / mib:,.0f}; host model {p.host.weights / mib:,.0f} + kv "
            f"{p.host.kv / mib:,.0f} + compute {p.host.compute / mib:,.0f}")


def offload_lines(winner: TrialRecord | None, records: list[TrialRecord]) -> list[str]:
    """Nothing when the winner has every layer on the GPU (or runs on the CPU)."""
    if winner is None or winner.spec.model.device != "cuda":
        return []
    ngl = winner.spec.model.n_gpu_layers
    place = winner.placement or {}
    total = place.get("total_layers")
    if ngl < 0 or (isinstance(total, int) and ngl >= total):
        return []
    of = f"/{total}" if isinstance(total, int) else ""
    model = winner.environment.model_path if winner.environment else None
    out = [f"{ngl}{of} layers on the GPU (partial offload); measured MiB: {_measured(winner)}"]
    if (pred := _predicted(winner, model, winner.workload.n_ctx)) is not None:
        out.append(f"memory plan MiB: {pred}")
    more = [r for r in records if r.spec.model.n_gpu_layers > ngl or r.spec.model.n_gpu_layers < 0]
    slower = [r for r in more if r.usable and r.objective is not None]
    failed = [r for r in more if r.state is TrialState.INFEASIBLE]
    if slower:
        best = min(slower, key=lambda r: r.objective or 0.0)
        out.append(f"more layers measured slower: #{best.number} ngl {best.spec.model.n_gpu_layers}"
                   f" {best.objective:.3f} s/request against {winner.objective or 0:.3f} s")
    if failed:
        counts = sorted({r.spec.model.n_gpu_layers for r in failed})
        out.append(f"more layers did not fit: ngl {', '.join(map(str, counts))} infeasible "
                   f"({failed[0].error or 'out of memory'})")
    return out
