"""One sweep from start to end, as an object whose state lives in it: prepare (check the model,
the options and every path; the memory plan and the time budget), probe the builds (starting the
missing ones in the background), plan the grid, open the study, search (each trial in a worker,
its record stored as it ends, the plan growing when a build lands), then the phases of
final.py: decide, confirm, finalists, serve, write. Library code: the CLI renders, this module
decides."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Literal

from tuner.builds.autobuild import BackgroundBuilds, Builder
from tuner.builds.buildinfo import fa_supports
from tuner.builds.selection import MissingBuild
from tuner.deploy.configcheck import close_children
from tuner.deploy.prodconfig import check_out
from tuner.errors import BadInput
from tuner.machine import cpuload
from tuner.machine.interrupt import critical
from tuner.machine.writable import check_writable_folder
from tuner.models import memplan
from tuner.models.modelcheck import check_model
from tuner.results.deathcauses import causes_of, dying_alike
from tuner.results.readings import TrialState
from tuner.results.records import Environment, TrialRecord
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
from tuner.search import offload
from tuner.search.constraints import apply_vram_cap
from tuner.search.ctxmemory import check_context_memory
from tuner.search.pareto import front as pareto_front
from tuner.search.planner import Planner
from tuner.search.pruning import check as check_prune, resolve as resolve_prune
from tuner.search.sampler import resolve, stale
from tuner.search.space import (
    DEFAULT_KV_CACHES,
    Space,
    check_batch_memory,
    default_space,
    grid,
    load_space,
    physical_memory,
)
from tuner.specs import TrialSpec
from tuner.sweep import offloadbudget
from tuner.sweep.decision import DEATHS_TO_STOP, best, objective
from tuner.sweep.drift import worker_drift
from tuner.sweep.environment import environment, gpu_of, model_sha256
from tuner.sweep.final import Finish
from tuner.sweep.options import Events, Quiet, SweepOptions, default_study
from tuner.sweep.preflight import check_records_identity, preflight_config
from tuner.sweep.probing import (
    BuildProbe,
    amx_notes,
    build_names,
    builds_to_make,
    probe_builds,
    start_builds,
    take_builds,
    without_redundant_builds,
)
from tuner.sweep.result import SweepResult
from tuner.worker.runner import Runner, SentinelResult
from tuner.worker.trialrecord import now


def run_sweep(opts: SweepOptions, events: Events | None = None,
              builder: Builder | None = None) -> SweepResult:
    """One sweep (``Sweep``); ``builder`` compiles a missing kernel build (None: tuner's
    build_variant; a test's FAKE where no CUDA toolkit is)."""
    return Sweep(opts, events, builder).run()


class Sweep(Finish):
    """One sweep's state and its phases, in the order ``run`` calls them."""

    space_file: Space | None
    runner: Runner
    to_make: list[MissingBuild]  # the kernel builds this GPU could use, not made yet
    space: Space
    specs: list[TrialSpec]
    space_id: str
    existing: list[TrialRecord]
    done: set[str]
    kind: Literal["grid", "tpe"]  # the sampler
    patience: int | None
    prune: bool
    t0: float  # the search's start

    def __init__(self, opts: SweepOptions, events: Events | None = None,
                 builder: Builder | None = None) -> None:
        self.opts, self.events, self.builder = opts, events or Quiet(), builder
        self.started = time.monotonic()
        self.wl = opts.workload
        self.stores: list[StudyStore] = []  # the study's store, once the storage is open
        self.later: list[str] = []  # what the memory plan says once the builds are probed
        self.budget: offloadbudget.TimeBudget | None = None
        self.sized: offloadbudget.Sized | None = None
        self.background: BackgroundBuilds | None = None
        self.ran, self.best, self.retried = [], None, 0
        self.build_s, self.extended_at = 0.0, 0  # extended_at: history when a build joined
        self.searched, self.stop_reason = False, ""
        self.seconds = {}

    def run(self) -> SweepResult:
        self.prepare()
        with Runner(Path(self.info.path), self.folder / "logs", {}, self.opts.trial_timeout_s,
                    self.opts.load_timeout_s, trials_per_worker=self.opts.trials_per_worker,
                    sentinel=self.opts.sentinel, on_sentinel=self.on_sentinel) as runner:
            self.runner = runner
            # Everything that can refuse the request runs before anything is written.
            self.probe()
            self.plan()
            self.open_study()
            self.search()
        seen = len({h.spec_key for h in self.planner.history()})
        search_s = time.monotonic() - self.t0
        try:  # the heartbeat keeps this sweep's config claim alive through the finalists
            result = self.decide()
        finally:
            self.planner.close()
            close_children()  # the server-config check's, kept from the preflight to the end
        return self.summary(result, seen, search_s)

    def prepare(self) -> None:
        """The model, the options and every output path checked; the memory plan and the time
        budget. Nothing is written yet."""
        opts = self.opts
        check_prune(opts.prune, opts.objective)
        self.info = check_model(opts.model)
        if self.info.context_length and self.wl.n_ctx > self.info.context_length:
            raise BadInput(f"n_ctx {self.wl.n_ctx} is above the model's trained context "
                           f"{self.info.context_length}")
        self.layout = memplan.layout_or_none(self.info.path)  # read once: the checks and the plan
        self.attention = memplan.keeps_kv_cache(self.layout)
        if not self.attention and not opts.space:
            self.later.append("the model keeps no KV cache (a recurrent model): the default "
                              "space leaves the cache type and flash attention at their defaults")
        self.space_file = load_space(opts.space) if opts.space else None
        if self.space_file is not None:
            check_batch_memory(self.space_file, self.info.n_vocab, physical_memory())
        check_context_memory(self.layout, self.wl.n_ctx,
                             self.space_file.kv_cache if self.space_file else DEFAULT_KV_CACHES,
                             opts.device, opts.max_vram_mib)
        self.study = check_study_name(opts.study or default_study(self.info, opts.device, self.wl))
        check_out(opts.out)  # a config path that cannot be written is refused before any trial
        check_writable_folder(opts.out, "production config")
        check_results_dir(opts.results_dir)
        if opts.storage:
            check_url(opts.storage)  # a malformed URL is refused before any worker starts
        self.folder = study_dir(opts.results_dir, self.study)
        self.plan_memory()
        self.apply_budget()

    def plan_memory(self) -> None:
        """The memory plan, before any worker holds GPU memory: said first; its layer counts
        make the default space of a model that does not fit whole (tuner/search/offload.py).
        Its absence (no GPU reading) is said once the builds are probed, so that a machine
        that cannot run a CUDA sweep at all hears only why (one error line)."""
        self.fit, lines = offload.prepare(self.layout, self.wl, self.opts.max_vram_mib) \
            if self.opts.device == "cuda" else (None, [])
        if self.fit is None:
            self.later.extend(lines)
        for line in lines if self.fit is not None else []:
            self.events.note(line)

    def apply_budget(self) -> None:
        """The time budget of a model that does not fit whole (offloadbudget.py): the sweep
        runs on a copy of its options with the budget's values."""
        opts, fit = self.opts, self.fit
        self.budget = budget = offloadbudget.choose(fit is not None and fit.partial,
                                                    opts.offload_budget_s, opts.explicit)
        if budget is not None:
            fin, reps, served = budget.apply(opts.finalists, self.wl.repetitions,
                                             opts.served_requests)
            self.wl = self.wl.model_copy(update={"repetitions": reps})
            self.opts = opts = dataclasses.replace(
                opts, workload=self.wl, finalists=fin, served_requests=served,
                build_missing=budget.builds(opts.build_missing),
                deadline=budget.deadline(self.started))
            for line in budget.lines(fin, reps, served, opts.build_missing):
                self.events.note(line)
        self.fit = None if self.space_file else fit

    def on_sentinel(self, result: SentinelResult) -> None:
        """A worker's drift sentinel (tuner/sweep/drift.py): stored, and said when it moved."""
        drift = worker_drift(self.study, result, self.wl)
        for s in self.stores:
            with critical():
                s.save_drift(drift)
        if drift.significant:
            self.events.note(f"drift: worker {drift.worker_id} moved pp {_pct(drift.pp_drift)}, "
                             f"tg {_pct(drift.tg_drift)} over its life (noise {drift.noise:.1%}); "
                             f"its trials {drift.trials} are flagged")

    def probe(self) -> None:
        """Each build loaded once (probing.py); the missing ones this GPU could use are
        listed, to be made for a discovered set only (none without CUDA)."""
        opts, explicit = self.opts, self.space_file is not None
        names = build_names(self.space_file.builds if self.space_file else None, opts.device,
                            opts.builds_dir)
        probes = {p.name: p for p in probe_builds(self.runner, names, opts.device, explicit,
                                                  opts.builds_dir)}
        self.to_make = builds_to_make(probes) if opts.build_missing and not explicit else []
        self.probes = without_redundant_builds(probes, explicit, self.events,
                                               building=bool(self.to_make))
        for line in self.later + (amx_notes(self.probes) if opts.device == "cpu" else []):
            self.events.note(line)

    def plan(self) -> None:
        """The grid of the builds there are, and the preflight of its server config."""
        self.space, self.specs = self.plan_of(self.probes)
        offload.check_experts(self.layout, self.space.n_cpu_moe)
        offload.check_parts(self.layout, self.space.ffn_on_host)
        if not self.specs:
            raise BadInput("the search space has no valid combination (n_ubatch must be <= "
                           "n_batch; a quantized V cache needs flash attention with kernels "
                           "compiled for that K/V pair)")
        preflight_config(self.specs[0], self.wl, str(self.info.path), self.lib_dirs())

    def plan_of(self, probes: dict[str, BuildProbe]) -> tuple[Space, list[TrialSpec]]:
        fit, device = self.fit, self.opts.device
        space = self.space_file or default_space(device, list(probes), fit.layers if fit else (),
                                                 attention=self.attention,
                                                 experts=fit.experts if fit else (),
                                                 parts=fit.parts if fit else ())
        return space, offload.keep_fitting(fit, grid(
            space, device, self.wl, lambda b, k, v: fa_supports(probes[b].flags, k, v)), self.wl)

    def open_study(self) -> None:
        """The study's storage opened (this GPU's study apart from another GPU's), the
        records checked against this model, device and workload, and unfinished claims
        reconciled."""
        opts = self.opts
        storage = opts.storage or default_storage(opts.results_dir)
        if not opts.storage:  # the default SQLite file lives in the results folder
            study_dir(opts.results_dir, self.study, create=True)
        self.planner = Planner(self.study, storage)  # one that cannot open leaves nothing written
        gpu = gpu_of(next(iter(self.probes.values())).hello) if opts.device == "cuda" else None
        if (sibling := self.planner.study_for_gpu(gpu)) is not None:
            # Trials are compared only on one GPU model and driver: this GPU's go apart.
            self.events.note(f"study {self.study!r} holds another GPU's trials; this GPU ({gpu}) "
                             f"runs study {sibling!r}, reported beside it")
            self.planner.close()
            self.study = check_study_name(sibling)
            self.planner = Planner(self.study, storage)
            self.folder = study_dir(opts.results_dir, self.study)
            self.runner.work_dir = self.folder / "logs"
        study_dir(opts.results_dir, self.study, create=True)
        self.sha = model_sha256(Path(self.info.path), opts.results_dir)
        self.envs = {name: self.environment_of(name, p) for name, p in self.probes.items()}
        self.check_identity(gpu)
        self.stores.append(self.planner.store)
        self.retried = self.planner.reconcile(self.existing)
        self.done = {r.spec_key for r in self.existing}

    def check_identity(self, gpu: str | None) -> None:
        """The stored records are the identity too: checked before the study's is set."""
        opts = self.opts
        self.legacy = legacy_records(opts.results_dir, self.study)
        self.existing = with_legacy(self.planner.records(), self.legacy)
        check_records_identity(self.existing, self.study, self.sha, opts.device, self.wl)
        self.planner.check_numbers(self.legacy)
        identity: dict[str, Any] = {"model_sha256": self.sha, "device": opts.device,
                                    "workload": [self.wl.prompt_tokens, self.wl.gen_tokens,
                                                 self.wl.n_ctx]}
        if gpu is not None:
            identity["gpu"] = gpu
        self.planner.check_identity(identity)

    def environment_of(self, name: str, probe: BuildProbe) -> Environment:
        return environment(probe.hello, name, Path(self.info.path), self.info.size_bytes,
                           self.sha)

    def choose_sampler(self) -> None:
        """The sampler, for the plan the builds being made will complete; its patience and
        whether it prunes."""
        self.space_id = self.space.space_id()
        expected = len(self.specs) * (len(self.probes) + len(self.to_make))
        self.kind = resolve(self.opts.sampler, expected // max(1, len(self.probes)))
        self.patience = self.opts.stop.patience_for(self.kind)
        self.prune = resolve_prune(self.opts.prune, self.kind, self.opts.objective)

    def search(self) -> None:
        """Trials until the plan is measured or a stop rule ends it, with the missing builds
        compiling meanwhile; what the sweep holds is handed back when it fails."""
        self.choose_sampler()
        self.t0 = time.monotonic()
        self.load0 = cpuload.snapshot()  # other processes' CPU time from here to the end
        try:
            # Started once nothing is left that can refuse the request.
            self.background = start_builds(self.to_make, self.opts.builds_dir,
                                           self.folder / "logs", self.events, self.builder)
            self.start_search()
            while self.step():
                pass
            if self.fit is not None and self.fit.partial:  # the plan's error, as measured
                for line in offload.boundary_lines(self.fit, self.planner.records(), self.wl):
                    self.events.note(line)
            if self.background is not None:  # paused or timed out with a build compiling
                self.events.note(f"waiting for {', '.join(self.background.variants)} to finish "
                                 "compiling before any deciding figure is taken")
                self.join_builds()
        except BaseException:  # interrupted or failed: hand back what this sweep holds
            if self.background is not None:
                self.background.cancel()
            self.planner.release()
            self.planner.close()
            close_children()
            raise

    def start_search(self) -> None:
        """The plan enqueued and said; the best of the study's stored trials."""
        opts = self.opts
        pending = self.planner.enqueue(self.specs, self.done, self.space_id, sampler=self.kind,
                                       seed=opts.seed, objective=opts.objective)
        self.events.planned(len(self.specs), min(pending, opts.trials or pending), self.retried)
        on = ("prompt speed, generation speed and GPU memory (the Pareto front)"
              if opts.objective == "pareto" else "the request time")
        if self.kind == "tpe":
            self.events.note(
                f"sampler tpe (model-based) on {on} over {len(self.specs)} settings; stops "
                f"after {self.patience} trials without a {opts.stop.min_gain:.0%} gain"
                if self.patience else f"sampler tpe on {on} over {len(self.specs)} settings")
        if self.prune:
            self.events.note("pruning: a trial clearly slower than the best stops early "
                             "(--no-prune measures every trial in full)")
        self.best = best([apply_vram_cap(r, opts.max_vram_mib) for r in self.existing],
                         set(self.planner.plan))

    def step(self) -> bool:
        """One turn of the search: a trial, or the wait for a build; False once it ends."""
        if self.stopped():
            return False
        nxt = self.planner.ask()
        if nxt is None and self.background is not None:
            self.events.note(f"every setting of the builds there are measured; waiting for "
                             f"{', '.join(self.background.variants)} to compile")
            self.join_builds()
            return True
        if nxt is None:
            return not self.end("every planned setting measured")
        self.trial(*nxt)
        return True

    def stopped(self) -> bool:
        """Whether a stop rule ends the search now (``stop_reason`` says which)."""
        opts = self.opts
        if opts.trials is not None and len(self.ran) >= opts.trials:
            self.stop_reason = f"paused: --trials {opts.trials} reached (a re-run continues)"
            return True
        if opts.stop.timeout_s is not None and time.monotonic() - self.t0 >= opts.stop.timeout_s:
            return self.end(f"stopped: --timeout {opts.stop.timeout_s:g} s")
        if self.background is not None and self.background.done():
            self.join_builds()
        if self.background is None and self.best is None and dying_alike(self.ran,
                                                                         DEATHS_TO_STOP):
            return self.end(f"stopped: the first {len(self.ran)} trials all died the same way "
                            "and none completed (the likely cause below)")
        # No stop for a lack of gain while a build is coming: its settings are unseen.
        if self.background is None and self.patience and (
                n := stale(self.planner.history(), self.planner.tpe, opts.stop.min_gain,
                           self.extended_at, opts.objective)) >= self.patience:
            what = " of the Pareto front" if opts.objective == "pareto" else ""
            return self.end(f"stopped: {n} trials without a gain{what} above "
                            f"{opts.stop.min_gain:.0%} (patience {self.patience})")
        return False

    def end(self, reason: str) -> bool:
        """The search ended (not paused), for ``reason``."""
        self.searched, self.stop_reason = True, reason
        return True

    def trial(self, number: int, spec: TrialSpec) -> None:
        """One trial in the sweep's worker, its record stored and told as it ends."""
        opts = self.opts
        self.events.started(spec)
        started = now()
        against = (self.best.measurement.request_seconds.samples
                   if self.prune and self.best is not None and self.best.measurement else None)
        bg = self.background
        beside = list(bg.variants) if bg and not bg.done() else None
        t_trial = time.monotonic()
        outcome = offload.planned_outcome(self.fit, spec, self.wl) or self.runner.run(
            spec, self.wl, number, prune_against=against)
        record = apply_vram_cap(self.record_of(number, spec, outcome, started).model_copy(
            update={"space_id": self.space_id, "alongside_build": beside}), opts.max_vram_mib)
        if not record.usable:
            check_disk(self.folder)  # a full disk, not the setting, may have failed it
        with critical():  # a signal waits until the record is stored and told
            self.planner.tell(number, record)
        self.ran.append(record)
        self.calibrate(record)
        if self.budget is not None and self.sized is None and record.state.value == "complete":
            self.size_budget(time.monotonic() - t_trial)
        if record.usable and (self.best is None or objective(record) < objective(self.best)):
            self.best = record
        self.events.finished(record, self.best)

    def size_budget(self, trial_s: float) -> None:
        """The first completed trial's time sizes the rest of the budget."""
        assert self.budget is not None
        opts = self.opts  # the budget's copy
        self.sized = sized = self.budget.size(trial_s, time.monotonic() - self.t0,
                                              len(self.specs), opts.finalists,
                                              opts.served_requests)
        opts.stop = self.budget.stop_rule(opts.stop, sized)
        if opts.deadline is not None:
            opts.deadline.trial_s = sized.trial_s
        self.patience = sized.patience if sized.patience is not None else self.patience
        if sized.trial_timeout_s is not None:
            self.runner.trial_timeout_s = opts.trial_timeout_s = sized.trial_timeout_s
        self.events.note(sized.line)

    def calibrate(self, record: TrialRecord) -> None:
        """The memory plan's process overhead from the first trial that read its GPU memory
        (tuner/search/offload.py calibrate), and lowered by any trial that loaded where the
        plan said it would not (walk_up); the grid moves when more layers fit."""
        fit, m = self.fit, record.measurement
        if fit is None or not fit.partial:
            return
        now = fit
        if fit.measured_overhead_mib is None and m is not None and m.gpu_peak_mib is not None:
            now, line = offload.calibrate(fit, record.spec, self.wl, m.gpu_peak_mib)
            self.events.note(line)
        if record.state in (TrialState.COMPLETE, TrialState.PRUNED) and (
                walked := offload.walk_up(now, record.spec, self.wl)) is not None:
            now, line = walked
            self.events.note(line)
        self.fit = now
        if (now.layers, now.experts, now.parts) != (fit.layers, fit.experts, fit.parts) \
                and not self.space_file:
            self.regrid()

    def regrid(self) -> None:
        """The plan made again from the builds and the memory plan there are now, its new
        settings enqueued (the sampler's history stays: it is the study's finished trials)."""
        opts = self.opts
        self.extended_at = len(self.planner.history())
        new_space, self.specs = self.plan_of(self.probes)
        self.space_id = new_space.space_id()
        pending = self.planner.enqueue(self.specs, self.done | {r.spec_key for r in self.ran},
                                       self.space_id, sampler=self.kind, seed=opts.seed,
                                       objective=opts.objective)
        self.events.planned(len(self.specs), pending, 0)

    def join_builds(self) -> None:
        """The background builds once they have ended (waiting for them), and the plan
        extended with their settings (the sampler's history stays: it is the study's
        finished trials)."""
        assert self.background is not None
        opts = self.opts
        merged = take_builds(self.runner, self.probes, self.background, opts.device,
                             opts.builds_dir, self.events)
        self.build_s = self.background.wait().seconds
        self.background = None
        if set(merged) == set(self.probes):  # nothing made (no network, a failed compile)
            return
        self.probes = merged
        for name, p in merged.items():
            if name not in self.envs:
                self.envs[name] = self.environment_of(name, p)
        self.regrid()

    def summary(self, result: SweepResult, seen: int, search_s: float) -> SweepResult:
        """The decision's result with the search's sampler, stop reason and times."""
        result.sampler, result.stop_reason, result.seen, result.planned = (
            self.kind, self.stop_reason, seen, len(self.specs))
        result.objective = self.opts.objective
        result.others = cpuload.others_since(self.load0)
        if result.best is None:
            result.causes = causes_of(result.records)
        if self.opts.objective == "pareto":
            result.front = pareto_front(r for r in result.records
                                        if r.spec_key in self.planner.plan)
        result.seconds = {**({"build (beside the search)": self.build_s} if self.build_s else {}),
                          "search": search_s, **result.seconds}
        return result


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:+.1f}%"
