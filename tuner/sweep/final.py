"""The phases after the search, by the one sweep holding the study's config claim: decide
(the best trial, or why another sweep writes the config), confirm the search's leaders in
fresh workers, settle the finalists (tuner/search/finalists.py), serve them (llama_cpp.server,
then the winner through llama-server and its per-token breakdown), and write the production
config. ``Finish`` holds them; ``Sweep`` (run.py) is a ``Finish`` that first searched."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from tuner.deploy.breakdown import with_breakdown
from tuner.deploy.llamaserverfinal import serve_winner
from tuner.deploy.prodconfig import WrittenConfig, write_production
from tuner.deploy.servedfinal import ServedChoice, choose
from tuner.deploy.servedmeasure import measure_served
from tuner.machine import cpuload
from tuner.models import memplan
from tuner.models.modelcheck import ModelInfo
from tuner.results.records import (
    Environment,
    FinalistReport,
    ServedFigures,
    TrialRecord,
    WorkerDrift,
)
from tuner.results.store import with_legacy
from tuner.search import offload
from tuner.search.constraints import apply_vram_cap, no_fit_reason
from tuner.search.finalists import (
    Confirmation,
    candidates,
    confirmation,
    confirms,
    final_decision,
    workers,
)
from tuner.search.offload import OffloadPlan
from tuner.search.planner import Planner
from tuner.specs import TrialSpec, Workload
from tuner.sweep import offloadbudget
from tuner.sweep.decision import (
    OTHERS_RUNNING,
    best,
    claim_refusal,
    config_env,
    no_served,
    pool_keys,
    stored_served,
    why_no_config,
)
from tuner.sweep.options import Events, SweepOptions
from tuner.sweep.probing import BuildProbe
from tuner.sweep.result import SweepResult
from tuner.worker.outcome import Outcome
from tuner.worker.runner import Runner
from tuner.worker.trialrecord import make_record, now


class Finish:
    """A sweep's state the phases after the search read (set by the search before them), and
    those phases."""

    opts: SweepOptions
    events: Events
    study: str
    folder: Path
    info: ModelInfo
    wl: Workload
    planner: Planner
    probes: dict[str, BuildProbe]
    envs: dict[str, Environment]
    legacy: list[TrialRecord]
    ran: list[TrialRecord]
    retried: int
    searched: bool  # the search ended (every setting tried, or a stop rule): not paused
    best: TrialRecord | None
    seconds: dict[str, float]
    fit: OffloadPlan | None  # the memory plan of a model that may not fit whole
    layout: memplan.ModelLayout | None  # the model's, read once (None: a shape not planned)
    load0: cpuload.CpuSnapshot | None  # the machine's CPU time at the search's start
    # Set here: the study's records, the pool the confirmation re-measures, the decision
    # and the winner's served figures and server thread count.
    records: list[TrialRecord]
    drifts: list[WorkerDrift]
    pool: list[TrialRecord]
    confirmed: Confirmation
    report: FinalistReport | None = None
    served: ServedFigures | None = None
    threads: int | None = None
    t_final: float = 0.0

    def decide(self) -> SweepResult:
        """The best trial of the study's records; the finalists when this sweep holds the
        config claim, no other sweep runs trials and the search ended; then the config, or
        the reason there is none."""
        opts = self.opts
        self.records = [apply_vram_cap(r, opts.max_vram_mib)
                        for r in with_legacy(self.planner.records(), self.legacy)]
        self.best = best(self.records, set(self.planner.plan))
        self.drifts = self.planner.drifts()
        reason, deferred = None, False
        if self.best is None:
            reason = no_fit_reason(self.records, opts.max_vram_mib) or why_no_config(self.records)
        elif self.planner.others_running():
            reason, deferred = OTHERS_RUNNING, True
        elif (refusal := claim_refusal(self.planner.claim_config(opts.out), opts.out)):
            reason, deferred = refusal, True
        elif self.searched and opts.finalists.rounds > 0:
            self.final()
        written = self.write() if self.best is not None and not deferred else None
        return SweepResult(self.study, self.ran, self.records, self.best, written, reason,
                           self.planner.url, self.retried, self.report, self.drifts,
                           deferred, seconds=self.seconds)

    def final(self) -> None:
        """Confirm, settle and serve the finalists (once: a stored decision over the same
        configs is reused, a re-run of a finished study measures nothing again); the winner
        becomes the best. The config claim is handed back when it fails."""
        try:
            if self.confirm() and self.finalists():
                if self.opts.served_requests > 0:
                    self.serve()
                self.save()
        except BaseException:
            self.planner.release_config()
            raise
        if self.report is not None:
            won = self.report.winner_trial
            self.best = next((r for r in self.records if r.number == won), self.best)

    def confirm(self) -> bool:
        """The search's leaders re-measured in fresh workers, the finalists chosen on those
        figures; False when there is nothing to decide or a stored decision holds."""
        fo = self.opts.finalists
        self.pool = candidates(self.records, set(self.planner.plan), self.drifts, fo)
        if not self.pool:
            return False
        stored = self.planner.store.finalists()
        if stored is not None and pool_keys(stored) == {f.spec_key for f in self.pool}:
            self.report = stored
            self.served, self.threads = stored_served(stored)
            return False
        if confirms(fo):
            self.events.note(f"confirming the search's best {len(self.pool)}: "
                             f"{fo.confirm_rounds} more rounds each in fresh processes, "
                             "interleaved; the finalists are chosen on the medians over processes")
        self.events.note(f"finalists: up to {fo.most} configs x {fo.rounds} rounds in fresh "
                         f"workers (up to {fo.per_worker} configs each), interleaved (more "
                         f"rounds, up to {fo.max_rounds}, while any is undecided)")
        self.t_final = time.monotonic()
        self.confirmed = confirmation(self.pool, self.measure_fresh, fo)
        return True

    def finalists(self) -> bool:
        """The finalists' rounds and decision; False (said) when there is none."""
        fo = self.opts.finalists
        self.report = final_decision(self.study, self.confirmed, self.measure_fresh, fo)
        self.seconds["finalists"] = time.monotonic() - self.t_final
        if self.report is None and confirms(fo):  # never left out silently
            self.events.note("no finalists: no config of the confirmation was proven and "
                             "completed in every fresh worker (crashed, timed out or killed); "
                             "the config written is the search's best, not re-measured")
        return self.report is not None

    def save(self) -> None:
        """The decision stored in the study (a re-run reuses it) and said."""
        assert self.report is not None
        self.report = self.report.model_copy(
            update={"machine_load": cpuload.others_since(self.load0)})
        self.planner.store.save_finalists(self.report)
        self.events.note(f"winner #{self.report.winner_trial}: {self.report.reason}")

    def serve(self) -> None:
        """The finalists through llama_cpp.server, the winner at several server thread
        counts, then through llama-server, then its per-token breakdown."""
        assert self.report is not None
        self.events.note(f"serving the finalists through llama_cpp.server "
                         f"({self.opts.served_requests} requests each) and the winner at "
                         "several server thread counts")
        t0 = time.monotonic()
        choice = choose(self.report, {f.number: f for f in self.pool}, self.serve_one)
        self.seconds["served"] = time.monotonic() - t0
        self.report, self.served, self.threads = choice.report, choice.served, choice.threads
        if choice.error:
            self.events.note(f"served figures of #{self.report.winner_trial}: none: "
                             f"{choice.error}")
        self.serve_llama_server(choice)
        self.breakdown(choice)

    def serve_one(self, record: TrialRecord, n_threads: int | None) -> ServedFigures:
        return measure_served(self.info.path, record.spec, self.wl,
                              self.lib_dirs().get(record.spec.model.build),
                              requests=self.opts.served_requests, threads=n_threads,
                              timeout_s=self.opts.load_timeout_s, via="server")

    def serve_llama_server(self, choice: ServedChoice) -> None:
        assert self.report is not None
        t0 = time.monotonic()
        self.report = serve_winner(
            self.report, choice.winner, self.served, self.threads, model_path=str(self.info.path),
            lib_dir=self.lib_dirs().get(choice.winner.spec.model.build),
            builds_dir=self.opts.builds_dir, out=self.opts.out,
            requests=self.opts.served_requests, timeout_s=self.opts.load_timeout_s,
            note=self.events.note, machine_load=lambda: cpuload.others_since(self.load0),
            # under a partial-offload budget the host's layers dominate a token: no
            # server-setting tries
            knobs=self.opts.deadline is None)
        self.seconds["llama-server"] = time.monotonic() - t0

    def breakdown(self, choice: ServedChoice) -> None:
        """The winner's per-token breakdown, when the time budget has room left for it."""
        assert self.report is not None
        t0 = time.monotonic()
        deadline = self.opts.deadline
        if deadline is not None and not deadline.allows(offloadbudget.BREAKDOWN_TRIALS):
            why = deadline.refusal("the breakdown", offloadbudget.BREAKDOWN_TRIALS)
            self.events.note(f"per-token breakdown of #{self.report.winner_trial}: {why}")
            self.report = self.report.model_copy(update={"breakdown_error": why})
        else:
            self.report = with_breakdown(self.report, choice, self.info.path, self.wl,
                                         self.lib_dirs(), self.opts.served_requests,
                                         self.opts.load_timeout_s, self.events.note)
        self.seconds["breakdown"] = time.monotonic() - t0

    def write(self) -> WrittenConfig:
        """The production config of the best trial, with the decision and its served figures
        (or why there are none); the config claim handed back after."""
        assert self.best is not None
        winner, final, opts = self.best, self.report, self.opts
        p = self.probes.get(winner.spec.model.build)
        extra: dict[str, Any] = ({"finalists": final.model_dump(mode="json")}
                                 if final is not None else {})
        load = cpuload.others_since(self.load0)
        if load is not None:  # beside its figures: what else kept the CPUs busy meanwhile
            extra[cpuload.SIDECAR_KEY] = dataclasses.asdict(load)
        try:
            written = write_production(
                winner, opts.out, model_path=str(self.info.path), results_dir=opts.results_dir,
                build_lib_dir=p.lib_dir if p else None, env=config_env(winner, p), extra=extra,
                served=self.served, threads=self.threads,
                served_error=None if self.served else no_served(opts.served_requests, final),
                finalists=final, breakdown=final.breakdown if final else None)
            self.planner.config_written()
        finally:
            self.planner.release_config()
        return written

    def measure_fresh(self, specs: list[TrialSpec]) -> list[TrialRecord]:
        """One round of ``specs`` in fresh workers (up to ``per_worker`` configs each): a crash
        ends only that worker, and the group's next config gets a new one (Runner.run)."""
        opts, got = self.opts, {}
        by_key = {f.spec_key: f for f in self.pool}
        for group in workers(specs, opts.finalists.per_worker):
            with Runner(Path(self.info.path), self.folder / "logs", self.lib_dirs(),
                        opts.trial_timeout_s, opts.load_timeout_s, trials_per_worker=len(group),
                        sentinel=False) as fresh:
                for i in group:
                    got[i] = self.fresh_trial(fresh, specs[i], by_key[specs[i].key()].number)
        return [got[i] for i in range(len(specs))]

    def fresh_trial(self, fresh: Runner, spec: TrialSpec, number: int) -> TrialRecord:
        started = now()
        # The plan's overhead and margin (calibrated by a trial, if one did); free memory is
        # read when checked.
        budget = (self.fit.plan.budget if self.fit
                  else memplan.Budget(free_mib=0.0, max_vram_mib=self.opts.max_vram_mib))
        outcome = offload.finalist_outcome(self.layout, spec, self.wl,
                                           budget) or fresh.run(spec, self.wl, number)
        record = self.record_of(number, spec, outcome, started)
        if record.state.value == "infeasible":
            self.events.note(f"finalist #{number} {spec.label()}: infeasible now "
                             f"({record.error}); out of the finalists")
        return record

    def record_of(self, number: int, spec: TrialSpec, outcome: Outcome,
                  started: str) -> TrialRecord:
        """A trial's record, with its build's flags and the environment it ran in."""
        probe = self.probes[spec.model.build]
        return make_record(self.study, number, spec, self.wl, outcome, probe.flags,
                           probe.expected_variant, self.envs[spec.model.build], started)

    def lib_dirs(self) -> dict[str, str | None]:
        return {name: p.lib_dir for name, p in self.probes.items()}
