"""The time budget of a sweep whose model does not fit at full offload: chosen and said in the
sweep's first lines (a FAKE GPU free-memory figure: no GPU here), options given explicitly kept,
none for a model that fits or with --offload-budget 0; what the first trial's time sizes. No
timed test: the sizing is checked on given times."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_run import tuner
from tuner.search import offload
from tuner.search.finalists import FinalistOptions
from tuner.search.sampler import StopRule
from tuner.sweep.offloadbudget import TimeBudget, choose
from tuner.worker.gpumem import FAKE_FREE_ENV


@pytest.fixture(scope="module")
def sparse_7b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full-size qwen2.5-7b-shaped F16 file whose data is a hole (header real, no disk)."""
    from tuner.models.modelgen import SHAPES, write_llama

    return write_llama(tmp_path_factory.mktemp("sparse") / "q7b.gguf", **SHAPES["qwen2.5-7b"],
                       sparse=True)


def _sweep(model: Path, tmp: Path, free_mib: int, *extra: object) -> str:
    """The sweep's first lines on this CPU-only machine: the plan and the budget are said
    before the builds are probed, then the sweep refuses (no CUDA build here, exit 3)."""
    proc = tuner("sweep", "--model", model, "--prompt-tokens", 2048, "--gen-tokens", 128,
                 "--results", tmp / "results", "--out", tmp / "production.yaml",
                 "--builds", tmp / "builds", *extra,
                 env={FAKE_FREE_ENV: str(free_mib), offload.FAKE_HOST_ENV: "65536"},
                 timeout=300)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "cannot offload to a GPU" in proc.stderr + proc.stdout
    return proc.stdout + proc.stderr


def test_budget_is_chosen_and_said_when_the_model_does_not_fit(sparse_7b: Path,
                                                               tmp_path: Path) -> None:
    out = _sweep(sparse_7b, tmp_path, 8192, "--build")
    assert "does NOT fit at full offload" in out
    assert "no kernel builds compiled first" not in out  # --build given
    assert ("time budget: 900 s for the whole sweep (the model does not fit at full offload"
            in out)
    assert ("2 repetitions per trial, finalists 2 x 2 rounds, 2 served requests each" in out)
    assert "kept as given: --build" in out


def test_explicit_options_are_kept(sparse_7b: Path, tmp_path: Path) -> None:
    out = _sweep(sparse_7b, tmp_path, 8192, "--repetitions", 5, "--timeout", 300,
                 "--finalist-rounds", 3, "--offload-budget", 600)
    assert "time budget: 600 s" in out
    assert "5 repetitions per trial, finalists 6 x 3 rounds, 2 served requests" in out
    assert "kept as given: --finalist-rounds, --repetitions, --timeout" in out
    assert "no kernel builds compiled first" in out


@pytest.mark.parametrize(("free", "extra"), [(140000, ()), (8192, ("--offload-budget", 0))])
def test_no_budget_when_the_model_fits_or_when_turned_off(
        sparse_7b: Path, tmp_path: Path, free: int, extra: tuple[object, ...]) -> None:
    out = _sweep(sparse_7b, tmp_path, free, *extra)
    assert "memory plan" in out and "time budget" not in out


def test_first_trial_sizes_the_rest() -> None:
    """A first trial of 60 s (most layers on the host), 120 settings, the default budget:
    the finalists (2 x 2 rounds), the served stage (2 finalists + llama-server) and the trial
    in flight when the search's timeout comes keep 8 trials' time; the search may run to
    900 - 480 s."""
    b = TimeBudget(total_s=900.0, explicit=frozenset())
    fin, reps, served = b.apply(FinalistOptions(), 3, 5)
    assert (fin.most, fin.rounds, fin.max_rounds, fin.confirm_rounds, reps, served) == \
        (2, 2, 2, 0, 2, 2)
    s = b.size(60.0, 60.0, 120, fin, served)
    assert (s.trial_timeout_s, s.search_s, s.patience) == (240.0, 420.0, 3)
    assert "search timeout 420 s (about 6 more trials of 120 settings" in s.line
    assert "480 s kept for the finalists, the served stage and the trial in flight" in s.line
    stop = b.stop_rule(StopRule(), s)
    assert (stop.timeout_s, stop.patience) == (420.0, 3)
    # A fast first trial: more room, patience up to its cap and never above the settings.
    fast = b.size(5.0, 5.0, 8, fin, served)
    assert (fast.trial_timeout_s, fast.search_s, fast.patience) == (120.0, 860.0, 8)
    # A slow one: the search still gets two more trials' time.
    slow = b.size(200.0, 200.0, 120, fin, served)
    assert slow.search_s == 600.0 and slow.patience == 3


def test_explicit_knobs_are_not_sized() -> None:
    b = TimeBudget(total_s=900.0, explicit=frozenset({"trial_timeout", "patience", "timeout_s",
                                                      "finalist_rounds"}))
    fin, _, _ = b.apply(FinalistOptions(rounds=4), 3, 5)
    assert fin.rounds == 4 and fin.most == FinalistOptions().most
    s = b.size(60.0, 60.0, 120, fin, 2)
    assert (s.trial_timeout_s, s.search_s, s.patience) == (None, None, None)
    assert b.stop_rule(StopRule(patience=7, timeout_s=100.0), s) == \
        StopRule(patience=7, timeout_s=100.0)
    assert not b.builds(True) and not b.builds(False)
    assert TimeBudget(900.0, frozenset({"build_missing"})).builds(True)
    assert choose(False, 900.0, frozenset()) is None and choose(True, 0.0, frozenset()) is None


class _Notes:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def planned(self, total: int, pending: int, retried: int) -> None: ...
    def started(self, spec: object) -> None: ...
    def finished(self, record: object, best: object) -> None: ...

    def note(self, text: str) -> None:
        self.lines.append(text)


def test_sweep_runs_under_the_budget(tiny_model: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep's wiring, on real trials of the tiny model on the CPU: the decision that the
    model does not fit is FAKE (no GPU here, so no plan); the budget's repetitions reach the
    trials, the first completed trial sizes the rest and the sweep says so, and an option
    given explicitly (--patience) is kept."""
    from tests.spaces import write_space
    from tuner.specs import Workload
    from tuner.sweep import offloadbudget, options, run

    monkeypatch.setattr(offloadbudget, "choose",
                        lambda partial, total, explicit: TimeBudget(900.0, explicit))
    space = write_space(tmp_path / "space.yaml", flash_attn=[False, True])
    opts = options.SweepOptions(
        model=tiny_model, device="cpu", space=space, results_dir=tmp_path / "results",
        out=tmp_path / "production.yaml", sampler="grid", served_requests=0,
        workload=Workload(prompt_tokens=32, gen_tokens=4, n_ctx=64, repetitions=3, warmup=0),
        finalists=FinalistOptions(rounds=0), stop=StopRule(patience=9),
        explicit=frozenset({"patience"}))
    notes = _Notes()
    result = run.run_sweep(opts, notes)
    said = "\n".join(notes.lines)
    assert "time budget: 900 s for the whole sweep" in said
    assert "2 repetitions per trial" in said and "kept as given: --patience" in said
    sized = [ln for ln in notes.lines if ln.startswith("time budget: the first completed trial")]
    assert len(sized) == 1, said
    assert "trial timeout 120 s" in sized[0] and "search timeout" in sized[0]
    assert "patience" not in sized[0]  # given: kept
    assert result.ran and all(r.workload.repetitions == 2 for r in result.ran)
    assert opts.workload.repetitions == 3  # the caller's options are not changed
    assert result.written is not None


def test_deadline_keeps_the_breakdown_to_what_the_budget_has_left() -> None:
    """The breakdown is not reserved: it runs only while its estimate in first-trial times is
    left, and a refusal says how much was left and how much it needed."""
    import time

    from tuner.sweep.offloadbudget import BREAKDOWN_TRIALS, Deadline

    budget = TimeBudget(600.0, frozenset())
    fresh = budget.deadline(time.monotonic())
    assert fresh.allows(BREAKDOWN_TRIALS)  # no trial timed yet: nothing to size it by
    fresh.trial_s = 30.0
    assert fresh.allows(BREAKDOWN_TRIALS)  # 600 s left, 120 s needed
    late = Deadline(end=time.monotonic() + 100.0, trial_s=30.0)
    assert not late.allows(BREAKDOWN_TRIALS)
    why = late.refusal("the breakdown", BREAKDOWN_TRIALS)
    assert why.startswith("not measured: the time budget has ") and "about 120 s" in why
    over = Deadline(end=time.monotonic() - 50.0, trial_s=30.0)
    assert "has 0 s left" in over.refusal("the breakdown", BREAKDOWN_TRIALS)
    # The breakdown is not among the steps the search leaves room for.
    fo = FinalistOptions(most=2, top=2, rounds=2, max_rounds=2)
    assert budget.reserve_trials(fo, 2) == 2 * 2 + 3


def test_the_first_trials_gpu_peak_calibrates_the_sweeps_plan(
        tiny_model: Path, sparse_7b: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep's wiring of the calibration, on real trials of the tiny model on the CPU: the
    partial-offload plan (of a 7B shape, 8 GiB free) and the trials' NVML peaks are FAKE (no
    GPU here), and kept with the small space file that a real sweep would take as written.
    The first trial with a peak calibrates the plan once, the sweep says so, the finalists are
    checked against the measured overhead, and the config is written."""
    from tests.spaces import write_space
    from tuner.models import memplan
    from tuner.specs import Workload
    from tuner.sweep import options, run
    from tuner.worker.runner import Runner

    monkeypatch.setenv(FAKE_FREE_ENV, "8192")
    monkeypatch.setenv(offload.FAKE_HOST_ENV, "65536")
    wl = Workload(prompt_tokens=32, gen_tokens=4, n_ctx=64, repetitions=2, warmup=0)
    fake_fit, _ = offload.prepare(memplan.read_layout(sparse_7b),
                                  Workload(prompt_tokens=2048, gen_tokens=128), None)
    assert fake_fit is not None and fake_fit.partial

    def plan_memory(self: run.Sweep) -> None:  # FAKE: the 7B's plan for the tiny model's sweep
        self.fit = fake_fit

    def apply_budget(self: run.Sweep) -> None:  # no budget; the plan kept with the space file
        pass

    real_run = Runner.run
    peaks: list[float] = []

    def with_peak(self: Runner, spec, wl, number, **kw):  # type: ignore[no-untyped-def]
        out = real_run(self, spec, wl, number, **kw)
        if out.reply is None or out.reply.event != "measured":
            return out
        need = memplan.place(fake_fit.plan.layout, spec.model.n_gpu_layers,
                             offload.spec_context(spec, wl)).gpu.total / memplan.MIB
        peaks.append(need + 300.0)  # FAKE: 300 MiB beyond the plan's buffers
        return out.model_copy(update={"reply": out.reply.model_copy(
            update={"gpu_peak_mib": peaks[-1]})})

    monkeypatch.setattr(run.Sweep, "plan_memory", plan_memory)
    monkeypatch.setattr(run.Sweep, "apply_budget", apply_budget)
    monkeypatch.setattr(Runner, "run", with_peak)
    seen: list[memplan.Budget] = []
    real_finalist = offload.finalist_outcome

    def finalist_outcome(layout, spec, wl, budget):  # type: ignore[no-untyped-def]
        seen.append(budget)
        return real_finalist(layout, spec, wl, budget)

    monkeypatch.setattr(offload, "finalist_outcome", finalist_outcome)
    told: list[offload.OffloadPlan] = []
    real_lines = offload.boundary_lines

    def boundary_lines(op, records, wl):  # type: ignore[no-untyped-def]
        told.append(op)
        return [*real_lines(op, records, wl), "memory plan against loads: (the sweep says it)"]

    monkeypatch.setattr(offload, "boundary_lines", boundary_lines)
    space = write_space(tmp_path / "space.yaml", flash_attn=[False, True])
    opts = options.SweepOptions(
        model=tiny_model, device="cpu", space=space, results_dir=tmp_path / "results",
        out=tmp_path / "production.yaml", sampler="grid", served_requests=0, workload=wl,
        finalists=FinalistOptions(rounds=1, max_rounds=1, confirm=0, confirm_rounds=0))
    notes = _Notes()
    result = run.run_sweep(opts, notes)
    calibrated = [ln for ln in notes.lines if "the process overhead is" in ln]
    assert len(calibrated) == 1, notes.lines
    assert "the process overhead is 300 MiB, not the 900 MiB planned" in calibrated[0]
    assert len(peaks) >= 2  # later trials' peaks do not calibrate again
    # After the search, the plan's boundary against the loads, from the calibrated plan.
    assert len(told) == 1 and told[0].measured_overhead_mib == pytest.approx(300.0)
    assert "memory plan against loads: (the sweep says it)" in notes.lines
    # The finalists are checked with the calibrated plan: the measured overhead, no margin.
    assert seen and all((b.overhead_mib, b.margin_mib) == (pytest.approx(300.0), 0.0)
                        for b in seen)
    assert result.written is not None


def test_the_sweep_walks_its_plan_up_on_each_load_past_it(
        sparse_7b: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sweep.calibrate's wiring for a CUDA sweep, which cannot run here: the sweep object is a
    FAKE stand-in holding what the method reads, and the records are TEST DATA with FAKE
    peaks. The first trial calibrates; the probe past the calibrated boundary that loaded
    walks it up and the grid is made again; a probe that failed at load moves nothing; a
    user's space file is never regridded."""
    from types import SimpleNamespace

    from tests.records_factory import make_record
    from tuner.models import memplan
    from tuner.results.records import TrialState
    from tuner.specs import Workload
    from tuner.sweep import run

    monkeypatch.setenv(FAKE_FREE_ENV, "8192")
    monkeypatch.setenv(offload.FAKE_HOST_ENV, "65536")
    wl = Workload(prompt_tokens=2048, gen_tokens=128)
    fit, _ = offload.prepare(memplan.read_layout(sparse_7b), wl, None)
    assert fit is not None and fit.partial
    q8 = {"n_ubatch": 512, "flash_attn": True, "type_k": "q8_0", "type_v": "q8_0",
          "workload": wl}
    ctx = offload.spec_context(make_record(0, n_gpu_layers=1, **q8).spec, wl)
    top = memplan.most_layers(fit.plan.layout, fit.plan.budget, ctx)

    def loaded(n: int, peak: float | None = None):  # type: ignore[no-untyped-def]
        r = make_record(n, n_gpu_layers=n, **q8)
        assert r.measurement is not None
        return r.model_copy(update={"measurement": r.measurement.model_copy(
            update={"gpu_peak_mib": peak})})

    regrids: list[tuple[int, ...]] = []
    notes = _Notes()
    sweep = SimpleNamespace(fit=fit, wl=wl, events=notes, space_file=None)
    sweep.regrid = lambda: regrids.append(sweep.fit.layers)
    buffers = memplan.place(fit.plan.layout, top, ctx).gpu.total / memplan.MIB
    run.Sweep.calibrate(sweep, loaded(top, buffers + 300))  # type: ignore[arg-type]
    m = memplan.most_layers(fit.plan.layout, sweep.fit.plan.budget, ctx)
    assert sweep.fit.measured_overhead_mib == pytest.approx(300) and len(regrids) == 1
    failed = make_record(m + 1, n_gpu_layers=m + 1, state=TrialState.INFEASIBLE, **q8)
    run.Sweep.calibrate(sweep, failed)  # type: ignore[arg-type]
    assert len(regrids) == 1 and len(notes.lines) == 1
    run.Sweep.calibrate(sweep, loaded(m + 1))  # type: ignore[arg-type]
    assert memplan.most_layers(fit.plan.layout, sweep.fit.plan.budget, ctx) == m + 1
    assert len(regrids) == 2 and m + 2 in regrids[-1]
    assert notes.lines[-1].startswith(f"memory plan: n_gpu_layers {m + 1} loaded and ran")
    sweep.space_file = Path("space.yaml")  # the user's grid stays as written
    run.Sweep.calibrate(sweep, loaded(m + 2))  # type: ignore[arg-type]
    assert len(regrids) == 2 and len(notes.lines) == 3
