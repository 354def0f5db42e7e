"""TEST DATA: builds realistic TrialRecord objects for tests of the code that reads records
(report, production config). The figures are made up, shaped like what a worker measures on an
H100 (or on a CPU for ``device="cpu"``); no trial ran to produce them."""

from __future__ import annotations

from tuner.results.records import (
    Environment,
    Measurement,
    Stat,
    TrialRecord,
    TrialState,
    Verification,
)
from tuner.specs import ContextSettings, ModelSettings, TrialSpec, Workload

SAMPLE_WORKLOAD = Workload(prompt_tokens=256, gen_tokens=64, n_ctx=512, repetitions=3, warmup=1)


def sample_environment(model_path: str = "/models/test-model.gguf", *, device: str = "cuda",
                       build: str = "installed", lib_dir: str | None = None) -> Environment:
    gpus = ([{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559.0}]
            if device == "cuda" else [])
    return Environment(
        hostname="test-host", platform="Linux-test", python="3.11.9", cpu="test cpu",
        cpu_count=16, llama_cpp_python="0.3.36", tuner="0.1.0", gpus=gpus,
        driver="550.00" if device == "cuda" else None, build_name=build, build_lib_dir=lib_dir,
        model_path=model_path, model_bytes=100_000_000, model_sha256="0" * 64,
    )


def sample_measurement(request_s: float, *, prompt_tokens: int = 256, gen_tokens: int = 64,
                       spread: float = 0.02, gpu_mib: float | None = 1200.0) -> Measurement:
    """Three repetitions around ``request_s``, split 20/80 between prompt and generation;
    ``spread`` is the relative distance between the fastest and slowest repetition."""
    reqs = [request_s * (1 - spread / 2), request_s, request_s * (1 + spread / 2)]
    pp = [r * 0.2 for r in reqs]
    tg = [r * 0.8 for r in reqs]
    return Measurement(
        prompt_tokens=prompt_tokens, gen_tokens=gen_tokens,
        pp_seconds=Stat.of(pp), tg_seconds=Stat.of(tg), request_seconds=Stat.of(reqs),
        pp_tps=Stat.of([prompt_tokens / s for s in pp]),
        tg_tps=Stat.of([gen_tokens / s for s in tg]),
        load_seconds=0.8, context_seconds=0.05, gpu_peak_mib=gpu_mib,
        gpu_total_mib=81559.0 if gpu_mib is not None else None, unstable=spread > 0.10,
    )


def make_record(
    number: int,
    *,
    state: TrialState = TrialState.COMPLETE,
    request_s: float | None = 1.0,
    verified: bool = True,
    reason: str | None = None,
    spread: float = 0.02,
    build: str = "installed",
    device: str = "cuda",
    n_gpu_layers: int = -1,
    n_cpu_moe: int = 0,
    ffn_on_host: str = "",
    cuda_graphs: bool = True,
    n_batch: int = 512,
    n_ubatch: int = 512,
    flash_attn: bool = False,
    type_k: str = "f16",
    type_v: str = "f16",
    n_threads: int | None = None,
    workload: Workload = SAMPLE_WORKLOAD,
    model_path: str = "/models/test-model.gguf",
    error: str | None = None,
    study: str = "test-study",
) -> TrialRecord:
    """A finished trial. COMPLETE records get a measurement of ``request_s``; any other state
    gets none, and the ``error`` (a default one per state when not given)."""
    spec = TrialSpec(
        model=ModelSettings(build=build, device=device, n_gpu_layers=n_gpu_layers,
                            n_cpu_moe=n_cpu_moe, ffn_on_host=ffn_on_host,
                            cuda_graphs=cuda_graphs),
        context=ContextSettings(n_batch=n_batch, n_ubatch=n_ubatch, flash_attn=flash_attn,
                                type_k=type_k, type_v=type_v, n_threads=n_threads),
    )
    complete = state is TrialState.COMPLETE
    measurement = None
    if complete and request_s is not None:
        measurement = sample_measurement(request_s, prompt_tokens=workload.prompt_tokens,
                                       gen_tokens=workload.gen_tokens, spread=spread,
                                       gpu_mib=1200.0 if device == "cuda" else None)
    if complete and verified:
        verification = Verification(verified=True, summary="all 31 layers on CUDA0")
    elif complete:
        verification = Verification(verified=False, summary="not proven",
                                    reasons=[reason or "2 of 31 layers on CPU"])
    else:
        verification = Verification(verified=False, reasons=["not measured"])
    if not complete and error is None:
        error = {
            TrialState.INFEASIBLE: "cudaMalloc failed: out of memory (KV cache 4096 MiB)",
            TrialState.CRASHED: "worker died: SIGABRT\nGGML_ASSERT failed",
            TrialState.TIMEOUT: "worker ran past 300 s and was killed",
            TrialState.FAILED: "RuntimeError: llama_decode returned -3",
        }[state]
    return TrialRecord(
        study=study, trial_id=f"test-{number:04d}", number=number, spec_key=spec.key(),
        spec=spec, workload=workload, state=state,
        objective=measurement.request_seconds.median if measurement else None,
        measurement=measurement, verification=verification, error=error,
        signal="SIGABRT" if state is TrialState.CRASHED else None,
        environment=sample_environment(model_path, device=device, build=build),
        started_at="2025-01-01T00:00:00+00:00", finished_at="2025-01-01T00:00:05+00:00",
    )


def store_records(url: str, study: str, records: list[TrialRecord],
                  identity: dict | None = None) -> None:
    """TEST DATA into a real optuna storage, written the way a sweep writes it: each record's
    trial created RUNNING, its record stored through ``StudyStore.put_record``, then its state
    told; trial numbers missing between records are filled with failed trials (as interrupted
    trials leave them). The study gets a ``tuner_identity`` so it lists as a tuner study."""
    import optuna

    from tuner.results.storeerrors import open_storage
    from tuner.results.studystore import IDENTITY, StudyStore

    State = optuna.trial.TrialState
    storage = open_storage(url)
    st = optuna.create_study(study_name=study, storage=storage, load_if_exists=True)
    if IDENTITY not in st.user_attrs:
        st.set_user_attr(IDENTITY, identity or {"test_data": True})
    store = StudyStore(storage, st._study_id, study, url)
    for rec in sorted(records, key=lambda r: r.number):
        while True:
            trial_id = storage.create_new_trial(st._study_id)
            if storage.get_trial_number_from_id(trial_id) >= rec.number:
                break
            storage.set_trial_state_values(trial_id, state=State.FAIL)
        rec = rec.model_copy(update={"number": storage.get_trial_number_from_id(trial_id)})
        store.put_record(trial_id, rec)
        if rec.usable:
            storage.set_trial_state_values(trial_id, state=State.COMPLETE, values=[rec.objective])
        else:
            storage.set_trial_state_values(trial_id, state=State.FAIL)
