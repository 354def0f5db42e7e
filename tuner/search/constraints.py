"""``--max-vram``: a cap on the GPU memory a trial may take. A measured trial above it is
``infeasible`` for the config: kept with its figures, reported with the reason "over
--max-vram", never chosen, and taught to the sampler as bad, like a trial that ran out of
memory (tuner/search/planner.py tells optuna every infeasible trial as a failure).

The memory a trial takes (``vram_mib``): NVML's peak for the worker process
(``Measurement.gpu_peak_mib``, read between the timed phases) when there is one; else the sum
of the model, KV and compute buffers llama.cpp's load log names (``TrialRecord.buffers_mib``)
on CUDA devices, or on every device when none is a CUDA device (a CPU build: the memory the
same settings would ask of a GPU, so the cap can be exercised without one).

The cap is applied when a trial's record is made, and again to the stored records when the
sweep decides (a stricter cap than an earlier sweep's excludes their trials too). A record
stored as over the cap stays infeasible under a looser one: a looser cap needs a new
``--study``."""

from __future__ import annotations

from tuner.evidence.placement import is_cuda_device
from tuner.results.records import TrialRecord, TrialState

OPTION = "--max-vram"


def vram_mib(record: TrialRecord) -> float | None:
    """The GPU memory the trial took (see the module docstring), or None when unknown."""
    m = record.measurement
    if m is not None and m.gpu_peak_mib is not None:
        return m.gpu_peak_mib
    sizes = [(dev, mib) for kind in record.buffers_mib.values() for dev, mib in kind.items()]
    if not sizes:
        return None
    on_gpu = [mib for dev, mib in sizes if is_cuda_device(dev)]
    return sum(on_gpu) if on_gpu else sum(mib for _, mib in sizes)


def over_vram(record: TrialRecord, cap_mib: float | None) -> str | None:
    """The reason a complete trial is over the cap, or None (no cap, within it, unknown)."""
    if cap_mib is None or record.state is not TrialState.COMPLETE:
        return None
    used = vram_mib(record)
    if used is None or used <= cap_mib:
        return None
    return f"over {OPTION}: {used:,.1f} MiB > {cap_mib:,.1f} MiB"


def apply_vram_cap(record: TrialRecord, cap_mib: float | None) -> TrialRecord:
    """``record`` as infeasible with the reason when it is over the cap, else unchanged."""
    why = over_vram(record, cap_mib)
    if why is None:
        return record
    return record.model_copy(update={"state": TrialState.INFEASIBLE, "error": why})


def no_fit_reason(records: list[TrialRecord], cap_mib: float | None) -> str | None:
    """Why there is no config when the cap left none: every measured trial over it."""
    if cap_mib is None:
        return None
    used = [v for r in records if r.measurement is not None
            and r.state in (TrialState.COMPLETE, TrialState.INFEASIBLE)
            and (v := vram_mib(r)) is not None]
    if not used or min(used) <= cap_mib:
        return None
    return (f"every measured trial is over {OPTION} {cap_mib:,.1f} MiB (the lightest took "
            f"{min(used):,.1f} MiB)")
