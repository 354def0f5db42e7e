"""One sweep from start to end: check the model, probe the builds, plan the grid, run each trial
in a worker, store its record as it ends, and write the production config from the best
verified trial. Library code: the CLI renders, this module decides."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from tuner.builds import catalog as builds_mod
from tuner.builds.autobuild import BackgroundBuilds, Builder
from tuner.builds.buildinfo import BuildFlags, fa_supports, parse_system_info
from tuner.builds.cpuflags import CUDA_INSTALL_HINT, has_amx
from tuner.builds.selection import MissingBuild, missing_builds, redundant_builds
from tuner.deploy.breakdown import with_breakdown
from tuner.deploy.configcheck import close_children
from tuner.deploy.llamaserverfinal import serve_winner
from tuner.deploy.prodconfig import WrittenConfig, check_out, write_production
from tuner.deploy.servedfinal import choose, served_error
from tuner.deploy.servedmeasure import measure_served
from tuner.errors import BadInput, EnvironmentUnfit
from tuner.evidence.deaths import Cause
from tuner.machine.interrupt import critical
from tuner.machine.writable import check_writable_folder
from tuner.models.modelcheck import ModelInfo, check_model
from tuner.results.deathcauses import causes_of, dying_alike
from tuner.results.records import Environment, FinalistReport, ServedFigures, TrialRecord, WorkerDrift
from tuner.results.store import (
    check_disk,
    check_results_dir,
    check_study_name,
    legacy_records,
    study_dir,
    with_legacy,
)
from tuner.results.storeerrors import check_url
from tuner.results.studystore import StudyStore, default_storage
from tuner.search import offload, offloadbudget
from tuner.search.constraints import apply_vram_cap, no_fit_reason
from tuner.search.drift import worker_drift
from tuner.search.environment import environment, gpu_of, model_sha256
from tuner.search.finalists import (
    FinalistOptions,
    candidates,
    confirm_and_settle,
    confirms,
    workers,
)
from tuner.search.pareto import Objective, front as pareto_front
from tuner.search.planner import Planner
from tuner.search.preflight import check_records_identity, preflight_config
from tuner.search.pruning import check as check_prune, resolve as resolve_prune
from tuner.search.sampler import SamplerName, StopRule, resolve, stale
from tuner.search.space import (
    Space,
    check_batch_memory,
    default_space,
    grid,
    load_space,
    physical_memory,
)
from tuner.specs import Device, ModelSettings, TrialSpec, Workload
from tuner.worker.protocol import Hello
from tuner.worker.runner import Runner, SentinelResult
from tuner.worker.trialrecord import make_record, now


class Events(Protocol):
    def planned(self, total: int, pending: int, retried: int) -> None: ...
    def started(self, spec: TrialSpec) -> None: ...
    def finished(self, record: TrialRecord, best: TrialRecord | None) -> None: ...
    def note(self, text: str) -> None: ...


class _Quiet:
    def planned(self, total: int, pending: int, retried: int) -> None: ...
    def started(self, spec: TrialSpec) -> None: ...
    def finished(self, record: TrialRecord, best: TrialRecord | None) -> None: ...
    def note(self, text: str) -> None: ...


@dataclass
class SweepOptions:
    model: Path
    device: Device = "cuda"
    trials: int | None = None
    space: Path | None = None
    workload: Workload = field(default_factory=Workload)
    results_dir: Path = Path("results")
    study: str | None = None
    storage: str | None = None
    out: Path = Path("configs/production.yaml")
    builds_dir: Path = Path("builds")
    trial_timeout_s: float = 600.0
    load_timeout_s: float = 900.0
    trials_per_worker: int = 2  # bounded worker life: see tuner/worker/runner.py
    sentinel: bool = True  # each worker re-measures its first trial when it ends
    finalists: FinalistOptions = field(default_factory=FinalistOptions)  # rounds 0: none
    served_requests: int = 5  # served-path requests per finalist (0: raw figures only)
    sampler: SamplerName = "auto"  # tuner/search/sampler.py
    stop: StopRule = field(default_factory=StopRule)  # tuner/search/sampler.py
    seed: int = 0
    prune: bool | None = None  # stop clearly slower trials early; None: on for tpe, off for grid
    max_vram_mib: float | None = None  # tuner/search/constraints.py
    objective: Objective = "request"  # pareto: search the front (tuner/search/pareto.py)
    build_missing: bool = True  # build the kernel variants this GPU could use first (autobuild)
    # A model that does not fit at full offload: the whole sweep's time budget (None or 0: none;
    # tuner/search/offloadbudget.py); ``explicit``: the CLI options given, which it keeps.
    offload_budget_s: float | None = offloadbudget.SWEEP_BUDGET_S
    deadline: offloadbudget.Deadline | None = None  # set by the sweep under a time budget
    explicit: frozenset[str] = frozenset()


@dataclass
class BuildProbe:
    name: str
    lib_dir: str | None
    expected_variant: str | None
    hello: Hello
    flags: BuildFlags


@dataclass
class SweepResult:
    study: str
    ran: list[TrialRecord]
    records: list[TrialRecord]
    best: TrialRecord | None
    written: WrittenConfig | None
    no_config_reason: str | None
    storage: str  # the optuna storage URL holding the study (tuner/results/studystore.py)
    retried: int = 0
    finalists: FinalistReport | None = None
    drifts: list[WorkerDrift] = field(default_factory=list)
    deferred: bool = False  # another live sweep of the study writes the config when it ends
    sampler: str = "grid"
    stop_reason: str = ""  # why the search ended (or paused)
    seen: int = 0  # settings of the plan with a finished trial
    planned: int = 0  # settings in the plan
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per phase
    objective: str = "request"
    front: list[TrialRecord] = field(default_factory=list)  # --objective pareto: the front
    causes: list[Cause] = field(default_factory=list)  # why every trial of a build died alike


def default_study(info: ModelInfo, device: Device, wl: Workload) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(info.path).stem).strip("-._") or "model"
    return f"{stem[:60]}-{device}-p{wl.prompt_tokens}-g{wl.gen_tokens}-c{wl.n_ctx}"


def _probe_builds(runner: Runner, names: list[str], device: Device, explicit: bool,
                  builds_dir: Path) -> list[BuildProbe]:
    found: list[BuildProbe] = []
    for name in names:
        info = builds_mod.resolve_build(name, builds_dir)
        runner.lib_dirs[name] = None if name == "installed" else str(Path(info.lib_dir).absolute())
        try:
            hello = runner.probe_hello(ModelSettings(build=name, device=device), keep=True)
        except RuntimeError as e:
            raise EnvironmentUnfit(f"build {name!r} cannot be loaded: {e}") from None
        flags = parse_system_info(hello.system_info or "")
        expected = None if name == "installed" else info.variant
        probe = BuildProbe(name, runner.lib_dirs[name], expected, hello, flags)
        if device == "cuda" and not hello.supports_gpu_offload:
            if explicit:
                raise EnvironmentUnfit(_no_cuda_message(name, flags), hint=CUDA_INSTALL_HINT)
            continue
        found.append(probe)
    if not found:
        raise EnvironmentUnfit(_no_cuda_message(names[0], None), hint=CUDA_INSTALL_HINT)
    return found


def builds_to_make(probes: dict[str, BuildProbe]) -> list[MissingBuild]:
    """The kernel builds this GPU could use that are not made yet (tuner/builds/selection.py)."""
    return missing_builds({n: (p.flags, p.hello.log) for n, p in probes.items()})


# What compiles a missing build: tuner's build_variant (None), or a test's FAKE (no CUDA here).
BUILDER: Builder | None = None


def _start_builds(missing: list[MissingBuild], opts: SweepOptions, logs: Path,
                  events: Events) -> BackgroundBuilds | None:
    """The missing kernel builds, started in the background (tuner/builds/autobuild.py): the
    search measures the builds there are meanwhile; None when nothing is missing."""
    if not missing:
        return None
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / "build.log"
    lock = threading.Lock()

    def log(line: str) -> None:
        with lock, log_path.open("a") as f:
            f.write(line + "\n")

    events.note(f"building {', '.join(m.variant for m in missing)} for this GPU from the installed "
                "version's source, at idle CPU priority, while the search measures the builds "
                f"there are (its log: {log_path}); figures taken beside the compile only "
                "nominate: the leaders are measured again after it (--no-build sweeps the "
                "builds there are)")
    return BackgroundBuilds(missing, opts.builds_dir, log, BUILDER)


def _take_builds(runner: Runner, probes: dict[str, BuildProbe], background: BackgroundBuilds,
                 opts: SweepOptions, events: Events) -> dict[str, BuildProbe]:
    """The probed builds plus those the background compile made (waiting for it to end). A
    build that cannot be made leaves the sweep on the builds it has."""
    done = background.wait()
    for line in done.failed:
        events.note(line)
    if not done.built:
        return probes
    events.note(f"built {', '.join(done.built)} in {done.seconds:.0f} s ({done.jobs} compile "
                f"jobs each, {done.priority} CPU priority); its settings join the search")
    try:
        new = _probe_builds(runner, done.built, opts.device, False, opts.builds_dir)
    except EnvironmentUnfit as exc:  # made, but it cannot drive this GPU: the sweep goes on
        events.note(f"{', '.join(done.built)} left out: {exc.message}")
        return probes
    merged = {**probes, **{p.name: p for p in new}}
    return _without_redundant_builds(merged, False, events)


def _without_redundant_builds(probes: dict[str, BuildProbe], explicit: bool,
                              events: Events, building: bool = False) -> dict[str, BuildProbe]:
    """The builds worth trials on this GPU: one that would run another's kernels
    (builds/selection.py) is left out of a discovered set, said once; a space file that names it
    keeps it, with the same note. ``building``: the missing builds are being made (no note)."""
    evidence = {n: (p.flags, p.hello.log) for n, p in probes.items()}
    same = redundant_builds(evidence)
    if not explicit and not building:
        for m in missing_builds(evidence):
            events.note(f"a kernel build that can change this GPU's kernels is not built: "
                        f"`{m.command}` makes it from the installed version's source (minutes); "
                        "the next sweep then tries it")
    for name, why in same.items():
        events.note(f"build {name}: {why}; " + (
            "kept because the space names it" if explicit else "its trials are left out"))
    return probes if explicit else {n: p for n, p in probes.items() if n not in same}


def _no_cuda_message(name: str, flags: BuildFlags | None) -> str:
    if flags is not None and flags.cuda:
        return f"build {name!r} has CUDA but found no CUDA device: check the driver and GPU"
    return (f"llama-cpp-python build {name!r} cannot offload to a GPU (a CPU-only build, or no "
            "CUDA device); use --device cpu to tune for the CPU on purpose")


def run_sweep(opts: SweepOptions, events: Events | None = None) -> SweepResult:
    events = events or _Quiet()
    sweep_t0 = time.monotonic()
    check_prune(opts.prune, opts.objective)
    info = check_model(opts.model)
    wl = opts.workload
    if info.context_length and wl.n_ctx > info.context_length:
        raise BadInput(f"n_ctx {wl.n_ctx} is above the model's trained context "
                       f"{info.context_length}")
    space_file = load_space(opts.space) if opts.space else None
    if space_file is not None:
        check_batch_memory(space_file, info.n_vocab, physical_memory())
    study = check_study_name(opts.study or default_study(info, opts.device, wl))
    check_out(opts.out)  # a config path that cannot be written is refused before any trial
    check_writable_folder(opts.out, "production config")
    check_results_dir(opts.results_dir)
    if opts.storage:
        check_url(opts.storage)  # a malformed URL is refused before any worker starts
    folder = study_dir(opts.results_dir, study)
    stores: list[StudyStore] = []  # the study's store, once the storage is open

    def on_sentinel(result: SentinelResult) -> None:
        drift = worker_drift(study, result, wl)
        for s in stores:
            with critical():
                s.save_drift(drift)
        if drift.significant:
            events.note(f"drift: worker {drift.worker_id} moved pp {_pct(drift.pp_drift)}, tg "
                        f"{_pct(drift.tg_drift)} over its life (noise {drift.noise:.1%}); its "
                        f"trials {drift.trials} are flagged")

    # The memory plan, before any worker holds GPU memory: said first; its layer counts make
    # the default space of a model that does not fit whole (tuner/search/offload.py).
    fit, fit_lines = offload.prepare(Path(info.path), wl, opts.max_vram_mib) \
        if opts.device == "cuda" else (None, [])
    # A plan is said first; its absence (no GPU reading) once the builds are probed, so that a
    # machine that cannot run a CUDA sweep at all hears only why (one error line).
    later = [] if fit is not None else fit_lines
    for line in fit_lines if fit is not None else []:
        events.note(line)
    budget = offloadbudget.choose(fit is not None and fit.partial, opts.offload_budget_s,
                                  opts.explicit)
    if budget is not None:
        fin, reps, served = budget.apply(opts.finalists, wl.repetitions, opts.served_requests)
        wl = wl.model_copy(update={"repetitions": reps})
        opts = dataclasses.replace(opts, workload=wl, finalists=fin, served_requests=served,
                                   build_missing=budget.builds(opts.build_missing),
                                   deadline=budget.deadline(sweep_t0))
        for line in budget.lines(fin, reps, served, opts.build_missing):
            events.note(line)
    sized: offloadbudget.Sized | None = None
    fit = None if space_file else fit

    with Runner(Path(info.path), folder / "logs", {}, opts.trial_timeout_s,
                opts.load_timeout_s, trials_per_worker=opts.trials_per_worker,
                sentinel=opts.sentinel, on_sentinel=on_sentinel) as runner:
        # Everything that can refuse the request runs before anything is written.
        names = space_file.builds if space_file else (
            ["installed"] if opts.device == "cpu"
            else [b.name for b in builds_mod.discover_builds(opts.builds_dir)])
        probes = {p.name: p for p in _probe_builds(runner, names, opts.device,
                                                    space_file is not None, opts.builds_dir)}
        # Missing kernel builds are made for a discovered set only (none without CUDA).
        to_make = builds_to_make(probes) if opts.build_missing and space_file is None else []
        probes = _without_redundant_builds(probes, space_file is not None, events,
                                           building=bool(to_make))
        for line in later:
            events.note(line)
        if opts.device == "cpu":
            for p in probes.values():
                if has_amx(p.hello.system_info or ""):
                    events.note(f"build {p.name} was compiled with llama.cpp's AMX code path "
                                "(AMX_INT8 = 1), which crashes on this CPU's weights (llama.cpp "
                                "issue 20824): its trials are likely to die; scripts/install.sh "
                                "rebuilds it without (tuner/builds/cpuflags.py)")

        def plan_of(probes: dict[str, BuildProbe]) -> tuple[Space, list[TrialSpec]]:
            space = space_file or default_space(opts.device, list(probes),
                                                fit.layers if fit else ())
            return space, offload.keep_fitting(fit, grid(
                space, opts.device, wl, lambda b, k, v: fa_supports(probes[b].flags, k, v)), wl)

        space, specs = plan_of(probes)
        if not specs:
            raise BadInput("the search space has no valid combination (n_ubatch must be <= "
                           "n_batch; a quantized V cache needs flash attention with kernels "
                           "compiled for that K/V pair)")
        preflight_config(specs[0], wl, str(info.path), {n: p.lib_dir for n, p in probes.items()})
        storage = opts.storage or default_storage(opts.results_dir)
        if not opts.storage:  # the default SQLite file lives in the results folder
            study_dir(opts.results_dir, study, create=True)
        planner = Planner(study, storage)  # a storage that cannot open leaves nothing written
        gpu = gpu_of(next(iter(probes.values())).hello) if opts.device == "cuda" else None
        if (sibling := planner.study_for_gpu(gpu)) is not None:
            # Trials are compared only on one GPU model and driver: this GPU's go apart.
            events.note(f"study {study!r} holds another GPU's trials; this GPU ({gpu}) runs "
                        f"study {sibling!r}, reported beside it")
            planner.close()
            study = check_study_name(sibling)
            planner = Planner(study, storage)
            folder = study_dir(opts.results_dir, study)
            runner.work_dir = folder / "logs"
        study_dir(opts.results_dir, study, create=True)
        sha = model_sha256(Path(info.path), opts.results_dir)
        envs: dict[str, Environment] = {
            name: environment(p.hello, name, Path(info.path), info.size_bytes, sha)
            for name, p in probes.items()}
        legacy = legacy_records(opts.results_dir, study)
        existing = with_legacy(planner.records(), legacy)
        # The records are the identity too: checked before the study's identity is set.
        check_records_identity(existing, study, sha, opts.device, wl)
        planner.check_numbers(legacy)
        identity: dict[str, Any] = {"model_sha256": sha, "device": opts.device,
                                    "workload": [wl.prompt_tokens, wl.gen_tokens, wl.n_ctx]}
        if gpu is not None:
            identity["gpu"] = gpu
        planner.check_identity(identity)
        stores.append(planner.store)
        retried = planner.reconcile(existing)
        done = {r.spec_key for r in existing}
        space_id = space.space_id()
        # The sampler is chosen for the plan the builds being made will complete.
        expected = len(specs) * (len(probes) + len(to_make))
        kind = resolve(opts.sampler, expected // max(1, len(probes)))
        patience = opts.stop.patience_for(kind)
        prune = resolve_prune(opts.prune, kind, opts.objective)
        build_s = 0.0
        extended_at = 0  # the study's finished trials when a build's settings joined the plan
        background: BackgroundBuilds | None = None
        ran: list[TrialRecord] = []

        def take_builds() -> None:
            """The background builds once they have ended (waiting for them), and the plan
            extended with their settings (the sampler's history stays: it is the study's
            finished trials)."""
            nonlocal background, probes, space_id, build_s, specs, extended_at
            assert background is not None
            merged = _take_builds(runner, probes, background, opts, events)
            build_s = background.wait().seconds
            background = None
            if set(merged) == set(probes):  # nothing made (no network, a failed compile)
                return
            probes = merged
            extended_at = len(planner.history())
            new_space, specs = plan_of(merged)
            space_id = new_space.space_id()
            for name, p in merged.items():
                if name not in envs:
                    envs[name] = environment(p.hello, name, Path(info.path), info.size_bytes, sha)
            pending = planner.enqueue(specs, done | {r.spec_key for r in ran}, space_id,
                                      sampler=kind, seed=opts.seed, objective=opts.objective)
            events.planned(len(specs), pending, 0)

        t0 = time.monotonic()
        try:
            # Started once nothing is left that can refuse the request.
            background = _start_builds(to_make, opts, folder / "logs", events)
            pending = planner.enqueue(specs, done, space_id, sampler=kind, seed=opts.seed,
                                      objective=opts.objective)
            events.planned(len(specs), min(pending, opts.trials or pending), retried)
            on = ("prompt speed, generation speed and GPU memory (the Pareto front)"
                  if opts.objective == "pareto" else "the request time")
            if kind == "tpe":
                events.note(f"sampler tpe (model-based) on {on} over {len(specs)} settings; "
                            f"stops after {patience} trials without a {opts.stop.min_gain:.0%} "
                            "gain" if patience else f"sampler tpe on {on} over {len(specs)} "
                            "settings")
            if prune:
                events.note("pruning: a trial clearly slower than the best stops early "
                            "(--no-prune measures every trial in full)")
            best = _best([apply_vram_cap(r, opts.max_vram_mib) for r in existing],
                         set(planner.plan))
            searched = False  # the search ended: every setting tried, or a stop rule
            stop_reason = ""
            while True:
                if opts.trials is not None and len(ran) >= opts.trials:
                    stop_reason = f"paused: --trials {opts.trials} reached (a re-run continues)"
                    break
                if opts.stop.timeout_s is not None and time.monotonic() - t0 >= opts.stop.timeout_s:
                    searched, stop_reason = True, f"stopped: --timeout {opts.stop.timeout_s:g} s"
                    break
                if background is not None and background.done():
                    take_builds()
                if background is None and best is None and dying_alike(ran, DEATHS_TO_STOP):
                    searched = True
                    stop_reason = (f"stopped: the first {len(ran)} trials all died the same way "
                                   "and none completed (the likely cause below)")
                    break
                # No stop for a lack of gain while a build is coming: its settings are unseen.
                if background is None and patience and (
                        stale := _stale(planner, opts, extended_at)) >= patience:
                    searched = True
                    what = " of the Pareto front" if opts.objective == "pareto" else ""
                    stop_reason = (f"stopped: {stale} trials without a gain{what} above "
                                   f"{opts.stop.min_gain:.0%} (patience {patience})")
                    break
                nxt = planner.ask()
                if nxt is None and background is not None:
                    events.note(f"every setting of the builds there are measured; waiting for "
                                f"{', '.join(background.variants)} to compile")
                    take_builds()
                    continue
                if nxt is None:
                    searched, stop_reason = True, "every planned setting measured"
                    break
                number, spec = nxt
                events.started(spec)
                started = now()
                against = (best.measurement.request_seconds.samples
                           if prune and best is not None and best.measurement else None)
                beside = list(background.variants) if background and not background.done() \
                    else None
                t_trial = time.monotonic()
                outcome = offload.planned_outcome(fit, spec, wl) or runner.run(
                    spec, wl, number, prune_against=against)
                probe = probes[spec.model.build]
                record = make_record(study, number, spec, wl, outcome, probe.flags,
                                     probe.expected_variant, envs[spec.model.build], started)
                record = apply_vram_cap(record.model_copy(update={
                    "space_id": space_id, "alongside_build": beside}), opts.max_vram_mib)
                if not record.usable:
                    check_disk(folder)  # a full disk, not the setting, may have failed it
                with critical():  # a signal waits until the record is stored and told
                    planner.tell(number, record)
                ran.append(record)
                if budget is not None and sized is None and record.state.value == "complete":
                    # The first completed trial's time sizes the rest of the budget.
                    sized = budget.size(time.monotonic() - t_trial, time.monotonic() - t0,
                                        len(specs), opts.finalists, opts.served_requests)
                    opts.stop = budget.stop_rule(opts.stop, sized)  # opts is the budget's copy
                    if opts.deadline is not None:
                        opts.deadline.trial_s = sized.trial_s
                    patience = sized.patience if sized.patience is not None else patience
                    if sized.trial_timeout_s is not None:
                        runner.trial_timeout_s = opts.trial_timeout_s = sized.trial_timeout_s
                    events.note(sized.line)
                if record.usable and (best is None or _objective(record) < _objective(best)):
                    best = record
                events.finished(record, best)
            if background is not None:  # paused or timed out with a build still compiling
                events.note(f"waiting for {', '.join(background.variants)} to finish compiling "
                            "before any deciding figure is taken")
                take_builds()
        except BaseException:  # interrupted or failed: hand back what this sweep holds
            if background is not None:
                background.cancel()
            planner.release()
            planner.close()
            close_children()
            raise

    seen = len({h.spec_key for h in planner.history()})
    search_s = time.monotonic() - t0
    try:  # the heartbeat keeps this sweep's config claim alive through the finalists
        result = _decide_and_write(opts, study, folder, legacy, planner, probes, envs, info,
                                   wl, ran, retried, searched, events)
    finally:
        planner.close()
        close_children()  # the server-config check's, kept from the preflight to the end
    result.sampler, result.stop_reason, result.seen, result.planned = (
        kind, stop_reason, seen, len(specs))
    result.objective = opts.objective
    if result.best is None:
        result.causes = causes_of(result.records)
    if opts.objective == "pareto":
        result.front = pareto_front(r for r in result.records if r.spec_key in planner.plan)
    result.seconds = {**({"build (beside the search)": build_s} if build_s else {}),
                      "search": search_s, **result.seconds}
    return result


def _stale(planner: Planner, opts: SweepOptions, extended_at: int = 0) -> int:
    """The stop rule's count for this sweep's study (sampler.stale)."""
    return stale(planner.history(), planner.tpe, opts.stop.min_gain, extended_at, opts.objective)


def _decide_and_write(opts: SweepOptions, study: str, folder: Path,
                      legacy: list[TrialRecord], planner: Planner,
                      probes: dict[str, BuildProbe], envs: dict[str, Environment],
                      info: ModelInfo, wl: Workload, ran: list[TrialRecord], retried: int,
                      searched: bool, events: Events) -> SweepResult:
    """After the trials: the finalists (by the one sweep holding the config claim) and the
    production config, or the reason there is none."""
    records = [apply_vram_cap(r, opts.max_vram_mib)
               for r in with_legacy(planner.records(), legacy)]
    best = _best(records, set(planner.plan))
    drifts = planner.drifts()
    final, served_fig, served_threads = None, None, None
    written, reason, deferred = None, None, False
    seconds: dict[str, float] = {}
    if best is None:
        reason = no_fit_reason(records, opts.max_vram_mib) or _why_no_config(records)
    elif planner.others_running():
        deferred = True
        reason = ("another sweep of this study is still running trials; the last one to end "
                  "writes the production config")
    elif (verdict := planner.claim_config(opts.out)) != "write":
        deferred = True
        reason = (f"another sweep of this study wrote it to {opts.out}" if verdict == "written"
                  else "another sweep of this study is writing it")
    elif searched and opts.finalists.rounds > 0:
        # This sweep holds the right to write the config, the study is complete and no other
        # sweep runs trials: decide between the leaders (once), then write the winner.
        try:
            final, served_fig, served_threads = _final(
                opts, study, planner.store, records, set(planner.plan), drifts, probes, envs,
                info, wl, folder / "logs", events, seconds)
        except BaseException:
            planner.release_config()
            raise
        if final is not None:
            best = next((r for r in records if r.number == final.winner_trial), best)
    if best is not None and not deferred:
        p = probes.get(best.spec.model.build)
        env_vars = {}
        if p is not None and p.lib_dir:
            env_vars["LLAMA_CPP_LIB_PATH"] = p.lib_dir
        if not best.spec.model.cuda_graphs:
            env_vars["GGML_CUDA_DISABLE_GRAPHS"] = "1"
        extra = {"finalists": final.model_dump(mode="json")} if final is not None else {}
        try:
            written = write_production(best, opts.out, model_path=str(info.path),
                                       results_dir=opts.results_dir,
                                       build_lib_dir=p.lib_dir if p else None, env=env_vars,
                                       extra=extra, served=served_fig, threads=served_threads,
                                       served_error=None if served_fig else _no_served(opts,
                                                                                       final),
                                       finalists=final,
                                       breakdown=final.breakdown if final else None)
            planner.config_written()
        finally:
            planner.release_config()
    return SweepResult(study, ran, records, best, written, reason, planner.url, retried, final,
                       drifts, deferred, seconds=seconds)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:+.1f}%"


def _final(opts: SweepOptions, study: str, store: StudyStore, records: list[TrialRecord],
           planned: set[str],
           drifts: list[WorkerDrift], probes: dict[str, BuildProbe],
           envs: dict[str, Environment], info: ModelInfo, wl: Workload, logs: Path,
           events: Events, seconds: dict[str, float],
           ) -> tuple[FinalistReport | None, ServedFigures | None, int | None]:
    """Confirm the search's leaders in fresh workers, choose the finalists on those figures,
    re-measure them, interleaved, and decide (tuner/search/finalists.py); then serve them
    (tuner/deploy/servedfinal.py). A stored decision over the same configs is reused: a re-run
    of a finished study measures nothing again. Returns the decision and the winner's served figures
    and server thread count (None, None when not served)."""
    fo = opts.finalists
    pool = candidates(records, planned, drifts, fo)
    if not pool:
        return None, None, None
    stored = store.finalists()
    if stored is not None and _pool_keys(stored) == {f.spec_key for f in pool}:
        return (stored, *_stored_served(stored))
    if confirms(fo):
        events.note(f"confirming the search's best {len(pool)}: {fo.confirm_rounds} more "
                    "rounds each in fresh processes, interleaved; the finalists are chosen on the medians "
                    "over processes")
    events.note(f"finalists: up to {fo.most} configs x {fo.rounds} rounds in fresh workers (up "
                f"to {fo.per_worker} configs each), interleaved (more rounds, up to "
                f"{fo.max_rounds}, while any is undecided)")
    by_number = {f.spec_key: f for f in pool}
    lib_dirs = {name: p.lib_dir for name, p in probes.items()}

    def measure(specs: list[TrialSpec]) -> list[TrialRecord]:
        got: dict[int, TrialRecord] = {}
        for group in workers(specs, fo.per_worker):
            # One fresh worker per group; a crash ends only that worker, and the group's next
            # config gets a new one (Runner.run).
            with Runner(Path(info.path), logs, dict(lib_dirs), opts.trial_timeout_s,
                        opts.load_timeout_s, trials_per_worker=len(group),
                        sentinel=False) as fresh:
                for i in group:
                    spec, source = specs[i], by_number[specs[i].key()]
                    started = now()
                    outcome = offload.finalist_outcome(
                        Path(info.path), spec, wl, opts.max_vram_mib) or fresh.run(
                        spec, wl, source.number)
                    probe = probes[spec.model.build]
                    got[i] = make_record(study, source.number, spec, wl, outcome, probe.flags,
                                         probe.expected_variant, envs[spec.model.build],
                                         started)
                    if got[i].state.value == "infeasible":
                        events.note(f"finalist #{source.number} {spec.label()}: infeasible now "
                                    f"({got[i].error}); out of the finalists")
        return [got[i] for i in range(len(specs))]

    t0 = time.monotonic()
    report = confirm_and_settle(study, pool, measure, fo)
    seconds["finalists"] = time.monotonic() - t0
    if report is None:
        if confirms(fo):  # never left out silently
            events.note("no finalists: no config of the confirmation was proven and completed "
                        "in every fresh worker (crashed, timed out or killed); the config "
                        "written is the search's best, not re-measured")
        return None, None, None
    fig, threads = None, None
    if opts.served_requests > 0:
        events.note(f"serving the finalists through llama_cpp.server ({opts.served_requests} "
                    "requests each) and the winner at several server thread counts")

        def serve(record: TrialRecord, n_threads: int | None) -> ServedFigures:
            return measure_served(info.path, record.spec, wl, lib_dirs.get(record.spec.model.build),
                                  requests=opts.served_requests, threads=n_threads,
                                  timeout_s=opts.load_timeout_s, via="server")

        t0 = time.monotonic()
        choice = choose(report, {f.number: f for f in pool}, serve)
        seconds["served"] = time.monotonic() - t0
        report, fig, threads = choice.report, choice.served, choice.threads
        if choice.error:
            events.note(f"served figures of #{report.winner_trial}: none: {choice.error}")
        t0 = time.monotonic()
        report = serve_winner(report, choice.winner, fig, threads, model_path=str(info.path),
                              lib_dir=lib_dirs.get(choice.winner.spec.model.build),
                              builds_dir=opts.builds_dir, out=opts.out,
                              requests=opts.served_requests, timeout_s=opts.load_timeout_s,
                              note=events.note,
                              # under a partial-offload budget the host's layers dominate a
                              # token: no server-setting tries
                              knobs=opts.deadline is None)
        seconds["llama-server"] = time.monotonic() - t0
        t0 = time.monotonic()
        if opts.deadline is not None and not opts.deadline.allows(offloadbudget.BREAKDOWN_TRIALS):
            why = opts.deadline.refusal("the breakdown", offloadbudget.BREAKDOWN_TRIALS)
            events.note(f"per-token breakdown of #{report.winner_trial}: {why}")
            report = report.model_copy(update={"breakdown_error": why})
        else:
            report = with_breakdown(report, choice, info.path, wl, lib_dirs,
                                    opts.served_requests, opts.load_timeout_s, events.note)
        seconds["breakdown"] = time.monotonic() - t0
    store.save_finalists(report)
    events.note(f"winner #{report.winner_trial}: {report.reason}")
    return report, fig, threads


def _no_served(opts: SweepOptions, final: FinalistReport | None) -> str:
    """Why the production config has no served figures: the sidecar says so."""
    if final is None:
        return ("not measured: no finalists were re-measured (served figures are taken of "
                "the finalists)")
    if opts.served_requests <= 0:
        return "not measured: --served-requests 0"
    return served_error(final) or "not measured"


def _pool_keys(report: FinalistReport) -> set[str]:
    """The configs a stored decision re-measured: its confirmed ones, else its finalists."""
    return {f.spec_key for f in (report.confirmed or report.finalists)}


def _stored_served(report: FinalistReport) -> tuple[ServedFigures | None, int | None]:
    win = next((f for f in report.finalists if f.trial == report.winner_trial), None)
    if win is None or not win.served or "error" in win.served:
        return None, None
    fig = ServedFigures.model_validate(win.served)
    return fig, fig.n_threads


def _best(records: list[TrialRecord], planned: set[str]) -> TrialRecord | None:
    usable = [r for r in records if r.usable and r.spec_key in planned]
    return min(usable, key=_objective) if usable else None


def _objective(r: TrialRecord) -> float:
    """A usable record's objective: ``usable`` is only true where it is set."""
    return cast(float, r.objective)


# Trials in a row dying the same way (the same state, signal and last log line), none complete,
# after which a sweep stops: the same death on this many different settings is the build's or
# the machine's, not a setting's, and the rest of the plan would die alike.
DEATHS_TO_STOP = 5


def _why_no_config(records: list[TrialRecord]) -> str:
    if not records:
        return "no trial has run yet"
    complete = [r for r in records if r.state.value == "complete"]
    if not complete:
        states = sorted({r.state.value for r in records})
        return f"no trial completed (states: {', '.join(states)})"
    reasons = sorted({r.verification.reasons[0] for r in complete if r.verification.reasons})
    return "no completed trial was verified: " + "; ".join(reasons[:3])
