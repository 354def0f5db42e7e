"""Turn a worker's outcome into a frozen trial record: statistics of the repetitions, the
placement evidence read from llama.cpp's own log, and the verdict on it."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from tuner.builds.buildinfo import BuildFlags, find_system_info
from tuner.evidence.opplacement import OpSummary, check_ops
from tuner.evidence.placement import (
    expect,
    is_full_offload,
    parse_load_log,
    part_layer,
    verify,
)
from tuner.results.records import Environment, Measurement, Stat, TrialRecord, Verification, widest_spread
from tuner.specs import TrialSpec, Workload
from tuner.worker.outcome import Outcome
from tuner.worker.protocol import Measured

UNSTABLE_SPREAD = 0.10  # repetitions of a phase, or of the request, more than 10% apart are flagged


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def measurement(data: Measured, wl: Workload, load_seconds: float) -> Measurement:
    """Statistics of the kept repetitions. A pruned trial's are partial (see ``Measured``):
    its request seconds are the pairs it completed, or its prompt seconds alone (lower bounds)
    when it stopped in the prompt phase: the figures its pruning was decided on."""
    pp, tg = data.pp_seconds, data.tg_seconds
    request = [a + b for a, b in zip(pp, tg)] if tg else list(pp)
    pp_stat = Stat.of(pp)
    req_stat = Stat.of(request)
    tg_stat = Stat.of(tg) if wl.gen_tokens and tg else None
    clocks = data.clocks
    throttled = bool(clocks and (clocks.start.throttle_reasons or clocks.end.throttle_reasons))
    return Measurement(
        prompt_tokens=wl.prompt_tokens,
        gen_tokens=wl.gen_tokens,
        pp_seconds=pp_stat,
        tg_seconds=tg_stat,
        request_seconds=req_stat,
        pp_tps=Stat.of([wl.prompt_tokens / s for s in pp]) if wl.prompt_tokens else Stat.of([0.0]),
        tg_tps=Stat.of([wl.gen_tokens / s for s in tg]) if wl.gen_tokens and tg else None,
        load_seconds=load_seconds,
        context_seconds=data.context_seconds,
        gpu_peak_mib=data.gpu_peak_mib,
        gpu_total_mib=data.gpu_total_mib,
        # Each phase on its own: a prompt phase that changed level between repetitions hides
        # in a request time that generation dominates (run 11 of docs/benchmarks.md).
        unstable=widest_spread(req_stat, pp_stat, tg_stat) > UNSTABLE_SPREAD,
        clocks=clocks,
        throttled=throttled,
        warmups=data.warmups,
        threads=data.threads,
    )


def make_record(study: str, number: int, spec: TrialSpec, wl: Workload, outcome: Outcome,
                flags: BuildFlags, expected_variant: str | None, env: Environment,
                started_at: str | None = None) -> TrialRecord:
    state = outcome.state
    # The flags of the library this trial's worker loaded (not the probe's): a worker that
    # loaded another build than the one asked for fails verification.
    hello = outcome.hello
    flags = (find_system_info(hello.system_info) if hello else None) or flags
    log = outcome.load_log + outcome.trial_log
    evidence = parse_load_log(log) if log else None
    verdict = Verification(verified=False, reasons=[outcome.error or f"trial {state.value}"])
    meas = None
    ops: OpSummary | None = None
    data = outcome.measured
    if data is not None and evidence is not None:
        v = verify(evidence, expect(spec, wl, expected_variant), flags)
        # Layers are proven by the load log, operations by the scheduler's report: both count.
        m = spec.model
        full = is_full_offload(evidence, m.n_gpu_layers)
        # At full offload, the nodes of the layers whose weights stay on the host run there:
        # the first n_cpu_moe, and the layer ffn_on_host keeps part of the FFN of
        part = part_layer(evidence, m.ffn_on_host, m.n_gpu_layers, m.n_cpu_moe) if full else None
        ops = check_ops(data.op_log, m.device, full_offload=full, error=data.op_error,
                        experts_on_host=max(m.n_cpu_moe, -1 if part is None else part + 1),
                        weights_on_host="experts or FFN matrices" if part is not None
                        else "experts")
        verdict = Verification(verified=v.verified and ops.verified is not False,
                               summary=f"{v.summary}; {ops.summary}",
                               reasons=[*v.reasons, *ops.reasons])
        meas = measurement(data, wl, hello.load_seconds if hello else 0.0)
    buffers = {}
    if evidence is not None:
        buffers = {"model": evidence.model_buffers_mib, "kv": evidence.kv_buffers_mib,
                   "compute": evidence.compute_buffers_mib}
    return TrialRecord(
        study=study,
        trial_id=uuid.uuid4().hex,
        number=number,
        spec_key=spec.key(),
        spec=spec,
        workload=wl,
        state=state,
        objective=meas.request_seconds.median if meas else None,
        measurement=meas,
        verification=verdict,
        placement=evidence.model_dump(mode="json", exclude={"build"}) if evidence else None,
        buffers_mib=buffers,
        ops=ops,
        error=outcome.error,
        signal=outcome.signal,
        log_tail=outcome.log_tail,
        environment=env,
        worker_id=outcome.worker_id,
        started_at=started_at or now(),
        finished_at=now(),
    )
