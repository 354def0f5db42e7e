"""Partial offload: the placement proof of N layers on the GPU (a fixture made from the real
full-offload log as llama.cpp prints ngl 20, and edits of it refused), the default space and the
sweep's first lines when the model does not fit (a FAKE GPU free-memory figure: no GPU here),
and an out-of-memory at load recorded as infeasible, never a crash."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_run import tuner
from tests.partial_fixture import partial_log
from tests.spaces import write_space
from tests.workerhooks import faults
from tuner.evidence.placement import Expectation, parse_load_log, verify
from tuner.models import memplan
from tuner.results.studystore import default_storage, list_studies, records_of
from tuner.search import offload
from tuner.search.space import default_space, grid
from tuner.specs import ContextSettings, ModelSettings, TrialSpec, Workload
from tuner.worker.gpumem import FAKE_FREE_ENV

FIXTURES = Path(__file__).parent / "fixtures"
PARTIAL = (FIXTURES / "cuda-partial-offload-ngl20.log").read_text()
DEFAULT_WL = Workload(prompt_tokens=2048, gen_tokens=128)  # the product's default workload
NGL20 = Expectation(device="cuda", n_gpu_layers=20, type_k="f16", type_v="f16",
                    flash_attn=True, n_ctx=4096, n_ubatch=512)


def test_the_fixture_is_the_edit_of_the_full_log() -> None:
    assert partial_log(20) == PARTIAL


def test_partial_offload_fixture_is_verified() -> None:
    ev = parse_load_log(PARTIAL)
    assert (ev.offloaded_layers, ev.total_layers) == (20, 33)
    assert ev.model_buffers_mib == {"CPU_Mapped": 1482.04, "CUDA0": 2165.83}
    assert ev.kv_buffers_mib == {"CPU": 832.0, "CUDA0": 1216.0}
    v = verify(ev, NGL20)
    assert v.verified, v.reasons
    assert v.summary.startswith("20/33 layers on CUDA0, 13/33 layers on CPU")


def _swap(text: str, to_cpu: int, to_gpu: int) -> str:
    text = text.replace(f"layer {to_cpu:3d} assigned to device CUDA0",
                        f"layer {to_cpu:3d} assigned to device CPU")
    return text.replace(f"layer {to_gpu:3d} assigned to device CPU",
                        f"layer {to_gpu:3d} assigned to device CUDA0")


@pytest.mark.parametrize(("edited", "reason"), [
    # the right count, the wrong layers: an early layer on CUDA, a late one on the CPU
    (_swap(PARTIAL, 20, 3), "layer 20"),
    # the output layer (index 32) left on the CPU
    (_swap(PARTIAL, 32, 12), "the output layer 32"),
    # llama.cpp says it offloaded another count
    (PARTIAL.replace("offloaded 20/33 layers", "offloaded 21/33 layers"),
     "offloaded 21/33 layers to GPU, expected 20/33"),
    # a GPU layer's KV cache on the CPU
    (PARTIAL.replace("llama_kv_cache: layer  25: dev = CUDA0",
                     "llama_kv_cache: layer  25: dev = CPU"), "KV cache of 1 layers"),
])
def test_an_edited_partial_log_is_refused(edited: str, reason: str) -> None:
    v = verify(parse_load_log(edited), NGL20)
    assert not v.verified
    assert any(reason in r for r in v.reasons), v.reasons


def test_another_layer_count_asked_is_refused() -> None:
    v = verify(parse_load_log(PARTIAL), NGL20.model_copy(update={"n_gpu_layers": 16}))
    assert not v.verified and any("expected 16" in r for r in v.reasons)


def test_full_offload_log_is_not_a_partial_one() -> None:
    full = (FIXTURES / "cuda-h100-full-offload.log").read_text()
    v = verify(parse_load_log(full), NGL20)
    assert not v.verified and any("33 layers assigned to a CUDA device, expected 20" in r
                                  for r in v.reasons)


@pytest.fixture(scope="module")
def sparse_7b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full-size qwen2.5-7b-shaped F16 file whose data is a hole (header real, no disk)."""
    from tuner.models.modelgen import SHAPES, write_llama

    return write_llama(tmp_path_factory.mktemp("sparse") / "q7b.gguf", **SHAPES["qwen2.5-7b"],
                       sparse=True)


def test_plan_and_default_space_when_the_model_does_not_fit(
        sparse_7b: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FAKE free memory: 8 GiB left of the GPU, a 14 GiB model."""
    monkeypatch.setenv(FAKE_FREE_ENV, "8192")
    monkeypatch.setenv(offload.FAKE_HOST_ENV, "65536")
    wl = Workload(prompt_tokens=2048, gen_tokens=128)
    op, lines = offload.prepare(memplan.read_layout(sparse_7b), wl, None)
    assert op is not None and op.partial
    at512 = {r.kv: r.most_layers for r in op.plan.rows if r.n_ubatch == 512}
    assert 0 < at512["f16/f16"] <= at512["q8_0/q8_0"] < 29
    tops = {kv: max(r.most_layers for r in op.plan.rows if r.kv == kv) for kv in at512}
    # the most that fit per cache type, 2 and 4 below, and one above (the plan's probe)
    assert set(op.layers) == ({t - d for t in tops.values() for d in (0, 2, 4)}
                              | {t + 1 for t in tops.values()})
    text = "\n".join(lines)
    assert "does NOT fit at full offload" in text and "n_ctx 2176" in text
    assert "searching n_gpu_layers" in text and "the host holds" in text
    space = default_space("cuda", ["installed"], op.layers)
    assert space.n_gpu_layers == sorted(op.layers, reverse=True)  # the most layers first
    assert set(space.kv_cache) == {"f16/f16", "q8_0/q8_0"} and len(space.n_threads) >= 1
    # The grid keeps only what the plan says fits, and one layer more (the probe): the
    # search's patience is not spent on settings that cannot load.
    specs = grid(space, "cuda", wl, lambda b, k, v: True)
    kept = offload.keep_fitting(op, specs, wl)
    assert 0 < len(kept) < len(specs)
    usable = op.plan.budget.usable_bytes
    probes = 0
    for s in specs:
        ctx = offload.spec_context(s, wl)
        fits = memplan.place(op.plan.layout, s.model.n_gpu_layers, ctx).gpu.total <= usable
        one_more = memplan.place(op.plan.layout, s.model.n_gpu_layers - 1, ctx).gpu.total \
            <= usable
        assert (s in kept) == (fits or one_more)
        probes += (s in kept) and not fits
    assert probes > 0
    assert {s.model.n_gpu_layers for s in kept} == set(op.layers)
    # The plan read again before a trial: what fits runs; memory taken by another process
    # since the start -> infeasible without a worker. (A setting of the grid beyond what fits
    # at its n_ubatch is infeasible the same way, at no cost.)
    spec = TrialSpec(model=ModelSettings(build="installed", device="cuda",
                                         n_gpu_layers=at512["q8_0/q8_0"]),
                     context=ContextSettings(n_ubatch=512, type_k="q8_0", type_v="q8_0",
                                             flash_attn=True))
    assert offload.planned_outcome(op, spec, wl) is None

    def at(n: int) -> TrialSpec:
        return spec.model_copy(update={"model": spec.model.model_copy(update={"n_gpu_layers": n})})

    assert offload.planned_outcome(op, at(at512["q8_0/q8_0"] + 1), wl) is None  # the probe
    past = offload.planned_outcome(op, at(at512["q8_0/q8_0"] + 2), wl)
    assert past is not None and past.state.value == "infeasible"
    assert f"(the most that fit: {at512['q8_0/q8_0']}, and one more is tried)" in (past.error or "")
    monkeypatch.setenv(FAKE_FREE_ENV, "6000")
    out = offload.planned_outcome(op, spec, wl)
    assert out is not None and out.state.value == "infeasible"
    assert out.error is not None and "does not fit by the memory plan" in out.error
    # A finalist measured again in a fresh worker: the same check, said as a finalist's.
    fin = offload.finalist_outcome(memplan.read_layout(sparse_7b), spec, wl, op.plan.budget)
    assert fin is not None and fin.state.value == "infeasible"
    assert (fin.error or "").startswith("finalist does not fit by the memory plan")
    full = spec.model_copy(update={"model": spec.model.model_copy(update={"n_gpu_layers": -1})})
    assert offload.finalist_outcome(memplan.read_layout(sparse_7b), full, wl, op.plan.budget) is None  # load says
    monkeypatch.setenv(FAKE_FREE_ENV, "8192")
    assert offload.finalist_outcome(memplan.read_layout(sparse_7b), spec, wl, op.plan.budget) is None


def test_a_trials_gpu_peak_calibrates_the_plan(sparse_7b: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The first trial's NVML peak less the buffers the plan gave it is the process overhead
    measured: below the planned one, the plan is made again with it, more layers fit, the
    search's layers grow and the before-trial check uses it; a reading above the planned
    overhead (a device-wide figure) leaves the plan as it is. The peaks are FAKE (no GPU)."""
    monkeypatch.setenv(FAKE_FREE_ENV, "8192")
    monkeypatch.setenv(offload.FAKE_HOST_ENV, "65536")
    wl = Workload(prompt_tokens=2048, gen_tokens=128)
    op, _ = offload.prepare(memplan.read_layout(sparse_7b), wl, None)
    assert op is not None and op.partial and op.measured_overhead_mib is None
    top = op.plan.best_layers()  # the plan's most that fit (op.layers has the probe above it)
    spec = TrialSpec(model=ModelSettings(build="installed", device="cuda", n_gpu_layers=top),
                     context=ContextSettings(n_ubatch=256, type_k="q8_0", type_v="q8_0",
                                             flash_attn=True))
    buffers = memplan.place(op.plan.layout, top, offload.spec_context(spec, wl)).gpu.total
    lean, line = offload.calibrate(op, spec, wl, buffers / memplan.MIB + 300)
    assert lean.measured_overhead_mib == pytest.approx(300)
    assert lean.overhead_mib == pytest.approx(300) and lean.plan.budget.free_mib == 8192
    assert lean.plan.budget.margin_mib == 0  # the error it stood for is measured now
    assert "the 256 MiB margin for the plan's error is dropped" in line
    assert max(lean.layers) > top and lean.layers == offload.search_layers(lean.plan)
    assert min(lean.layers) >= min(op.layers)  # the old boundary's lower counts are not kept
    assert lean.plan.best_layers() > op.plan.best_layers()
    assert "the process overhead is 300 MiB, not the 900 MiB planned" in line
    assert f"searching n_gpu_layers {list(lean.layers)} (was {list(op.layers)})" in line
    # A setting beyond the first plan's boundary and its probe, but within the calibrated one
    # and its probe: the check before its trial lets it run with the measured overhead,
    # refuses it with the planned.
    most = next(r.most_layers for r in lean.plan.rows if (r.kv, r.n_ubatch) == ("q8_0/q8_0", 256))
    assert most > top
    beyond = spec.model_copy(update={"model": spec.model.model_copy(
        update={"n_gpu_layers": most + 1})})
    assert offload.no_longer_fits(op.plan.layout, beyond, wl, lean.plan.budget) is None
    assert offload.no_longer_fits(op.plan.layout, beyond, wl, op.plan.budget) is not None
    # A device-wide reading (another process's memory in it): the plan stays, said so.
    same, line = offload.calibrate(op, spec, wl, buffers / memplan.MIB + 5000)
    assert same.plan == op.plan and same.layers == op.layers
    assert same.measured_overhead_mib is not None and "the plan stays" in line


def test_host_too_small_for_its_share_is_refused(sparse_7b: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner.errors import EnvironmentUnfit

    monkeypatch.setenv(FAKE_FREE_ENV, "8192")
    monkeypatch.setenv(offload.FAKE_HOST_ENV, "2048")
    with pytest.raises(EnvironmentUnfit, match="the host has 2,048 MiB available"):
        offload.prepare(memplan.read_layout(sparse_7b), DEFAULT_WL, None)


def test_a_model_that_fits_keeps_the_full_offload_space(
        sparse_7b: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAKE_FREE_ENV, "140000")
    op, lines = offload.prepare(memplan.read_layout(sparse_7b), DEFAULT_WL, None)
    assert op is not None and not op.partial and "fits at full offload (29/29" in lines[-1]
    assert default_space("cuda", ["installed"], op.layers).n_gpu_layers == [-1]


def test_doctor_says_what_fits(sparse_7b: Path) -> None:
    proc = tuner("doctor", "--model", sparse_7b, "--n-ctx", 2176,
                 env={FAKE_FREE_ENV: "8192"}, timeout=300)
    assert "Traceback" not in proc.stderr
    assert "does NOT fit at full offload on this GPU" in proc.stdout
    layout = memplan.read_layout(sparse_7b)
    q8 = memplan.most_layers(layout, memplan.Budget(free_mib=8192),
                             memplan.Context(n_ctx=2176, type_k="q8_0", type_v="q8_0",
                                             n_ubatch=512, flash_attn=True))
    assert f"kv q8_0/q8_0  n_ubatch 512   flash_attn on : {q8:>3} layers" in proc.stdout


def test_out_of_memory_at_load_is_infeasible_not_a_crash(tiny_model: Path,
                                                         tmp_path: Path) -> None:
    """FAKE: every worker dies at load as llama.cpp does on a cudaMalloc failure (no GPU
    here, and a CPU trial's model settings are all alike); the sweep records each trial
    infeasible, says why there is no config, and exits 3: no crash, no traceback."""
    space = write_space(tmp_path / "space.yaml", flash_attn=[False, True])
    proc = tuner("sweep", "--model", tiny_model, "--device", "cpu", "--space", space,
                 "--prompt-tokens", 32, "--gen-tokens", 4, "--n-ctx", 64, "--repetitions", 1,
                 "--warmup", 0, "--results", tmp_path / "results",
                 "--out", tmp_path / "production.yaml", "--finalist-rounds", 0,
                 "--sampler", "grid", env=faults.env("oom@load"), timeout=300)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 3, proc.stderr[-2000:]
    url = default_storage(tmp_path / "results")
    records = records_of(url, list_studies(url)[0])
    assert len(records) == 2
    for r in records:
        assert r.state.value == "infeasible" and "out of memory" in (r.error or "")
    assert not (tmp_path / "production.yaml").exists()


def test_report_shows_the_plan_beside_the_measure_and_why_fewer_layers_won(
        sparse_7b: Path) -> None:
    """TEST DATA records (tests/records_factory.py) of a partial-offload study of the sparse
    qwen2.5-7b file: ngl 20 won, ngl 24 was slower, ngl 28 ran out of memory."""
    from tests.records_factory import make_record
    from tuner.reports.overview import overview
    from tuner.results.records import TrialState

    def rec(n: int, ngl: int, **kw: object) -> object:
        r = make_record(n, n_gpu_layers=ngl, model_path=str(sparse_7b), **kw)  # type: ignore[arg-type]
        return r.model_copy(update={
            "placement": {"total_layers": 29},
            "buffers_mib": {"model": {"CUDA0": 3000.0, "CPU_Mapped": 11000.0},
                            "kv": {"CUDA0": 40.0, "CPU": 80.0}, "compute": {"CUDA0": 310.0}}})
    records = [rec(0, 20, request_s=8.0), rec(1, 24, request_s=8.6),
               rec(2, 28, state=TrialState.INFEASIBLE)]
    ov = overview("s", records)  # type: ignore[arg-type]
    text = "\n".join(ov.offload)
    assert ov.offload[0].startswith("20/29 layers on the GPU (partial offload); measured MiB: "
                                    "CUDA0 model 3,000 + kv 40 + compute 310")
    assert "memory plan MiB: GPU model " in text
    assert "more on the GPU measured slower: #1 ngl 24 8.600 s/request against 8.000 s" in text
    assert "more on the GPU did not fit: ngl 28 infeasible (cudaMalloc failed" in text
    full = overview("s", [make_record(0)])
    assert full.offload == []


def test_production_config_carries_the_layers_and_cache_types() -> None:
    from tests.records_factory import make_record
    from tuner.deploy.prodconfig import server_config

    r = make_record(0, n_gpu_layers=20, type_k="q8_0", type_v="q8_0", flash_attn=True)
    model = server_config(r, "/models/m.gguf")["models"][0]
    assert model["n_gpu_layers"] == 20
    assert (model["type_k"], model["type_v"], model["flash_attn"]) == (8, 8, True)


def test_own_workers_gpu_memory_is_counted_only_when_nvml_pids_are_ours(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A FAKE NVML module (no GPU here) listing a real child process of this test, then a pid
    from another pid namespace: the sweep's own share is told in the first case only."""
    import subprocess
    import sys
    import types

    from tuner.worker import gpumem

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        procs: list[types.SimpleNamespace] = []
        fake = types.SimpleNamespace(
            nvmlInit=lambda: None, nvmlShutdown=lambda: None,
            nvmlDeviceGetHandleByIndex=lambda i: i,
            nvmlDeviceGetComputeRunningProcesses=lambda h: list(procs))
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        monkeypatch.delenv(FAKE_FREE_ENV, raising=False)
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        assert gpumem.children_mib(0) is None  # a child runs, NVML lists nothing: unknown
        procs.append(types.SimpleNamespace(pid=child.pid, usedGpuMemory=3 * 2**30))
        assert gpumem.children_mib(0) == 3072.0
        procs.append(types.SimpleNamespace(pid=2**22 + 12345, usedGpuMemory=2**30))
        assert gpumem.children_mib(0) is None  # a pid this process cannot see
    finally:
        child.kill()
        child.wait()


def test_plan_says_at_what_context_the_whole_model_would_fit(
        sparse_7b: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FAKE free memory 10 MiB short of the leanest full offload at n_ctx 2176 (q4_0 cache,
    n_ubatch 256): the plan says the shorter context at which the whole model would fit, the
    largest multiple of 256 that does; with 8 GiB, a 14 GiB F16 model fits at no context, and
    the plan says so."""
    monkeypatch.setenv(offload.FAKE_HOST_ENV, "65536")
    wl = Workload(prompt_tokens=2048, gen_tokens=128)
    layout = memplan.read_layout(sparse_7b)

    def q4(n_ctx: int) -> memplan.Context:
        return memplan.Context(n_ctx=n_ctx, type_k="q4_0", type_v="q4_0",
                               n_ubatch=min(256, n_ctx), flash_attn=True)
    full = memplan.place(layout, -1, q4(2176)).gpu.total / memplan.MIB
    base = memplan.Budget(free_mib=0)
    monkeypatch.setenv(FAKE_FREE_ENV, f"{full + base.overhead_mib + base.margin_mib - 10:.0f}")
    op, lines = offload.prepare(memplan.read_layout(sparse_7b), wl, None)
    assert op is not None and op.partial
    ctx = dict(op.plan.full_ctx)["q4_0/q4_0"]
    assert 0 < ctx < 2176 and ctx % 256 == 0
    usable = op.plan.budget.usable_bytes
    assert memplan.place(layout, -1, q4(ctx)).gpu.total <= usable
    assert memplan.place(layout, -1, q4(ctx + 256)).gpu.total > usable
    assert ("whole model would fit at a shorter context (n_ubatch 256): " in "\n".join(lines)
            and f"n_ctx up to {ctx:,} with kv q4_0/q4_0" in "\n".join(lines))
    monkeypatch.setenv(FAKE_FREE_ENV, "8192")
    _, lines = offload.prepare(memplan.read_layout(sparse_7b), wl, None)
    assert any("the whole model does not fit at any context" in ln for ln in lines)


def test_the_plans_boundary_against_the_loads_the_search_made(
        sparse_7b: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the search, per cache type, n_ubatch and flash attention it tried: the most layers
    the plan says fit, the most that loaded (complete or pruned), the fewest that failed at
    load; the plan's own refusals (no load tried) and other devices are left out. The records
    are TEST DATA (made up, no trial ran)."""
    from tests.records_factory import make_record
    from tuner.results.records import TrialState

    monkeypatch.setenv(FAKE_FREE_ENV, "8192")
    monkeypatch.setenv(offload.FAKE_HOST_ENV, "65536")
    wl = Workload(prompt_tokens=2048, gen_tokens=128)
    op, _ = offload.prepare(memplan.read_layout(sparse_7b), wl, None)
    assert op is not None and op.partial
    q8 = {"n_ubatch": 512, "flash_attn": True, "type_k": "q8_0", "type_v": "q8_0",
          "workload": wl}
    top = memplan.most_layers(op.plan.layout, op.plan.budget, offload.spec_context(
        make_record(0, n_gpu_layers=1, **q8).spec, wl))
    records = [
        make_record(1, n_gpu_layers=top, request_s=9.0, **q8),
        make_record(2, n_gpu_layers=top + 1, request_s=8.5, **q8),  # the probe loaded
        make_record(3, n_gpu_layers=top + 3, state=TrialState.INFEASIBLE,
                    error="worker died at load (out of memory)", **q8),
        make_record(4, n_gpu_layers=top + 2, state=TrialState.INFEASIBLE,
                    error="does not fit by the memory plan: ...", **q8),  # no load tried
        make_record(5, n_gpu_layers=top - 2, state=TrialState.PRUNED, n_ubatch=256,
                    error="pruned: clearly slower than the best", workload=wl),
        make_record(6, n_gpu_layers=0, device="cpu", workload=wl),
    ]
    lines = offload.boundary_lines(op, records, wl)
    f16 = memplan.most_layers(op.plan.layout, op.plan.budget, memplan.Context(
        n_ctx=wl.n_ctx, n_ubatch=256))
    assert lines == [
        f"memory plan against loads: kv f16/f16 n_ubatch 256 flash_attn off: planned {f16}, "
        f"loaded up to {top - 2}",
        f"memory plan against loads: kv q8_0/q8_0 n_ubatch 512 flash_attn on: planned {top}, "
        f"loaded up to {top + 1}, failed to load at {top + 3}",
    ]


def test_a_load_past_the_plan_walks_the_boundary_up(sparse_7b: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe past the calibrated boundary loaded and ran: the overhead becomes what that
    load left, the boundary moves to it, the next layer is searched as the probe and the check
    before a trial lets it run; a load the plan already fits moves nothing; walked again, the
    boundary moves once more, and the sweep still reports the calibrated plan's boundary as
    planned. The free memory, peak and loads are FAKE (no GPU here)."""
    from tests.records_factory import make_record
    from tuner.results.records import TrialState

    monkeypatch.setenv(FAKE_FREE_ENV, "8192")
    monkeypatch.setenv(offload.FAKE_HOST_ENV, "65536")
    wl = Workload(prompt_tokens=2048, gen_tokens=128)
    op, _ = offload.prepare(memplan.read_layout(sparse_7b), wl, None)
    assert op is not None and op.partial
    layout = op.plan.layout

    def at(n: int) -> TrialSpec:
        return TrialSpec(model=ModelSettings(build="installed", device="cuda", n_gpu_layers=n),
                         context=ContextSettings(n_ubatch=512, type_k="q8_0", type_v="q8_0",
                                                 flash_attn=True))

    ctx = offload.spec_context(at(1), wl)
    top = memplan.most_layers(layout, op.plan.budget, ctx)
    buffers = memplan.place(layout, top, ctx).gpu.total / memplan.MIB
    lean, _ = offload.calibrate(op, at(top), wl, buffers + 300)
    m = memplan.most_layers(layout, lean.plan.budget, ctx)
    assert m + 1 in lean.layers  # the probe; one further is refused before its trial
    assert offload.no_longer_fits(layout, at(m + 2), wl, lean.plan.budget) is not None
    assert offload.walk_up(lean, at(m), wl) is None  # the plan fits it: nothing learnt

    walked, line = offload.walk_up(lean, at(m + 1), wl) or (None, "")
    assert walked is not None
    assert memplan.most_layers(layout, walked.plan.budget, ctx) == m + 1
    assert m + 2 in walked.layers and walked.layers == offload.search_layers(walked.plan)
    need = memplan.place(layout, m + 1, ctx).gpu.total / memplan.MIB
    assert walked.overhead_mib == pytest.approx(8192 - need) and walked.overhead_mib < 300
    assert walked.plan.budget.margin_mib == 0 and walked.measured_overhead_mib == 300
    assert walked.predicted == lean.plan.budget
    assert line.startswith(f"memory plan: n_gpu_layers {m + 1} loaded and ran where the plan "
                           f"gave {need:,.0f} MiB on the GPU more than its ")
    assert f"searching n_gpu_layers {list(walked.layers)} (was {list(lean.layers)})" in line
    assert offload.no_longer_fits(layout, at(m + 2), wl, walked.plan.budget) is None

    again, _ = offload.walk_up(walked, at(m + 2), wl) or (None, "")
    assert again is not None and m + 3 in again.layers
    assert again.predicted == lean.plan.budget  # the plan as calibrated, not the walk
    q8 = {"n_ubatch": 512, "flash_attn": True, "type_k": "q8_0", "type_v": "q8_0",
          "workload": wl}
    records = [make_record(i, n_gpu_layers=n, **q8) for i, n in enumerate((m, m + 1, m + 2))]
    records.append(make_record(3, n_gpu_layers=m + 3, state=TrialState.INFEASIBLE,
                               error="worker died at load (out of memory)", **q8))
    assert offload.boundary_lines(again, records, wl) == [
        f"memory plan against loads: kv q8_0/q8_0 n_ubatch 512 flash_attn on: planned {m}, "
        f"loaded up to {m + 2}, failed to load at {m + 3}"]

    # Another process let 1 GiB go since the plan was made: the same load proves the plan
    # wrong by less, and the boundary moves to the load, no further.
    monkeypatch.setenv(FAKE_FREE_ENV, "9216")
    freed, _ = offload.walk_up(lean, at(m + 1), wl) or (None, "")
    assert freed is not None and freed.plan.budget.free_mib == 9216
    assert freed.overhead_mib == pytest.approx(9216 - need)
    assert memplan.most_layers(layout, freed.plan.budget, ctx) == m + 1
    monkeypatch.setenv(FAKE_FREE_ENV, "8192")

    # Every layer on the GPU loaded: the plan now fits the model whole, the layers stay.
    every = layout.n_offloadable
    whole, _ = offload.walk_up(again, at(every), wl) or (None, "")
    assert whole is not None and whole.plan.fits_full and whole.layers == again.layers


def test_a_load_under_a_vram_cap_walks_within_the_cap(sparse_7b: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """With --max-vram below the free memory, what a load past the plan proves is measured
    against the cap (a record over it is infeasible before it gets here): the boundary moves
    to the load, never past the cap. FAKE free memory (no GPU here)."""
    monkeypatch.setenv(FAKE_FREE_ENV, "16384")
    monkeypatch.setenv(offload.FAKE_HOST_ENV, "65536")
    wl = Workload(prompt_tokens=2048, gen_tokens=128)
    op, _ = offload.prepare(memplan.read_layout(sparse_7b), wl, 8192)
    assert op is not None and op.partial
    spec = TrialSpec(model=ModelSettings(build="installed", device="cuda", n_gpu_layers=1),
                     context=ContextSettings(n_ubatch=512))
    ctx = offload.spec_context(spec, wl)
    n = memplan.most_layers(op.plan.layout, op.plan.budget, ctx) + 1
    probe = spec.model_copy(update={"model": spec.model.model_copy(update={"n_gpu_layers": n})})
    walked, _ = offload.walk_up(op, probe, wl) or (None, "")
    assert walked is not None
    need = memplan.place(op.plan.layout, n, ctx).gpu.total / memplan.MIB
    assert walked.overhead_mib == pytest.approx(8192 - need)
    assert memplan.most_layers(op.plan.layout, walked.plan.budget, ctx) == n
