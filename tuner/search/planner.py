"""The study: which trial runs next. The plan is the grid of the current search space, walked
lazily in order; what is finished or running lives in the study's storage (optuna's trials, each
finished one holding its full record (tuner/results/studystore.py), and the claims of tuner/results/claims.py),
so a sweep killed at any moment resumes where it stopped and any number of sweeps of one study
share the grid: a setting runs once, by the sweep that claimed it.

A study outlives its search space: trials of settings outside the current space stay as history
(each optuna trial and record carries the ``space_id`` it was planned under) and are left out of
the choice; settings the new space adds are planned. Optuna trials carry the setting in user
attributes, never as categorical parameters, whose value sets optuna requires to stay the same
for the whole study. No subprocess code here."""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState as OptunaState

from tuner.errors import BadInput, TunerError
from tuner.machine.interrupt import critical
from tuner.results.claims import CONFIG_PREFIX, Claims, is_stale
from tuner.results.records import TrialRecord, TrialState, WorkerDrift
from tuner.results.store import GPU_SEP
from tuner.results.storeerrors import open_storage, storage_error
from tuner.results.studystore import RECORD, StudyStore
from tuner.search.pareto import Objective, point_of
from tuner.search.sampler import Finished, TpeOrder
from tuner.specs import TrialSpec

optuna.logging.set_verbosity(logging.WARNING)
T = TypeVar("T")


def _gpu_words(gpu: str) -> list[str]:
    """The words of a GPU's name (``gpu_in_use``: ``NAME, driver VERSION``), lowercase, without
    the vendor: ``NVIDIA A100-SXM4-80GB`` -> ``a100 sxm4 80gb``."""
    name = gpu.partition(", driver ")[0]
    return [w for w in re.split(r"[^A-Za-z0-9]+", name.lower()) if w and w != "nvidia"]


def gpu_study_name(study: str, gpu: str) -> str:
    """The sibling study of ``study`` for another GPU model or driver: ``<study>--a100-sxm4-80gb
    -550.54.15`` (the GPU's name without the vendor, then the driver), at most 100 characters."""
    driver = gpu.partition(", driver ")[2]
    tag = "-".join([*_gpu_words(gpu), re.sub(r"[^A-Za-z0-9.]+", "", driver)]).strip("-.")
    return f"{study}{GPU_SEP}{tag or 'gpu'}"[:100]


def _slug(gpu: str | None) -> str:
    """A study-name-safe short form of a GPU's name (``NVIDIA H100 80GB HBM3`` -> ``h100``)."""
    words = [w for w in _gpu_words(gpu or "") if w not in ("tesla", "geforce")]
    return (words[0] if words else "gpu")[:40]


class Planner:
    def __init__(self, study: str, storage: str) -> None:
        self.url = storage
        self.storage = open_storage(storage)
        self.study = self._guard(lambda: optuna.create_study(
            study_name=study, storage=self.storage, direction="minimize", load_if_exists=True))
        self.claims = self._guard(lambda: Claims(self.storage.engine, study))
        self.store = StudyStore(self.storage, self.study._study_id, study, storage)
        self.started = time.time()
        self._config_key: str | None = None
        self.plan: dict[str, TrialSpec] = {}
        self.space_id = ""
        self._order: list[str] = []
        self._cursor = 0
        self._done: set[str] = set()
        self._tpe: TpeOrder | None = None
        self.objective: Objective = "request"
        self._taken: set[str] = set()  # claimed by another sweep when this one asked

    def _guard(self, fn: Callable[[], T]) -> T:
        """Run a storage operation; its failures become one-line TunerErrors."""
        try:
            with critical():
                return fn()
        except (sa.exc.SQLAlchemyError, OSError, optuna.exceptions.OptunaError) as e:
            raise storage_error(e, self.url) from None

    # -- identity and consistency with the records -------------------------------------------
    def records(self) -> list[TrialRecord]:
        """Every record stored in the study, by trial number."""
        return self._guard(self.store.records)

    def drifts(self) -> list[WorkerDrift]:
        """Every worker's drift record stored in the study."""
        return self._guard(self.store.drifts)

    def check_identity(self, identity: dict[str, Any]) -> None:
        """The study's model, device, workload and GPU (its model and driver), kept in the
        storage itself (shared by every host): set by the first sweep, refused when another
        sweep differs. Trials are compared only on one GPU model and driver: a sweep on
        another GPU runs the sibling study (``study_for_gpu``), and naming a study of another
        GPU is refused. A study made before the GPU was part of the identity takes this
        sweep's."""
        old = self._guard(lambda: self.study.user_attrs.get("tuner_identity"))
        name = self.study.study_name
        if old is not None and {k: v for k, v in old.items() if k != "gpu"} != {
                k: v for k, v in identity.items() if k != "gpu"}:
            raise BadInput(f"study {name!r} was run with another model, device or workload; "
                           "pick another --study to keep both")
        if old is not None and old.get("gpu") != identity.get("gpu") and "gpu" in old:
            raise BadInput(f"study {name!r} holds trials of {old['gpu']}; this sweep's GPU is "
                           f"{identity.get('gpu')}: trials are compared only on one GPU model "
                           "and driver", hint=f"give this GPU its own study, e.g. --study "
                                              f"{name}-{_slug(identity.get('gpu'))}")
        if old != identity:
            self._guard(lambda: self.study.set_user_attr("tuner_identity", identity))

    def study_for_gpu(self, gpu: str | None) -> str | None:
        """Where this sweep's trials belong when this study holds another GPU model's or
        driver's: its sibling study (``gpu_study_name``), so that trials are compared only on
        one GPU and each GPU model gets its own decision and config. None: this study."""
        old = self._guard(lambda: self.study.user_attrs.get("tuner_identity"))
        if gpu is None or old is None or old.get("gpu") in (None, gpu):
            return None
        return gpu_study_name(self.study.study_name, gpu)

    def check_numbers(self, records: list[TrialRecord]) -> None:
        """Refuse a storage that lost trials the records of an older version's results
        folder (trials.jsonl) already name (emptied, replaced): a new study would reuse their
        numbers."""
        if not records:
            return
        count = self._guard(lambda: len(self.study.get_trials(deepcopy=False)))
        top = max(r.number for r in records)
        if top >= count:
            raise BadInput(f"the study's storage ({self.url}) holds {count} trial(s) but the "
                           f"records of study {self.study.study_name!r} number up to #{top}: "
                           "the storage was emptied or replaced",
                           hint="restore the storage, or move the study's results folder aside "
                                "to start over, or pick another --study")

    # -- closing what dead sweeps left -------------------------------------------------------
    def reconcile(self, records: list[TrialRecord]) -> int:
        """Close trials left RUNNING by sweeps that are gone (never one of a live sweep): told
        their result if their record was stored, failed (and so run again) if not. Trials
        queued by older tuner versions are failed as superseded. Returns how many will be
        retried."""
        return self._guard(lambda: self._reconcile(records))

    def _reconcile(self, records: list[TrialRecord]) -> int:
        by_number = {r.number: r for r in records}
        claims = {c.spec_key: c for c in self.claims.all()}
        retried = 0
        for t in self.study.get_trials(deepcopy=False, states=(OptunaState.RUNNING,)):
            key, owner = t.user_attrs.get("spec_key"), t.user_attrs.get("owner")
            c = claims.get(key) if key is not None else None
            if c is not None and c.owner == owner and c.state == "running" and not is_stale(c):
                continue  # a live sweep runs it
            rec = by_number.get(t.number)
            if rec is not None and rec.spec_key == key:
                self._tell(t.number, rec, store=RECORD not in t.user_attrs)  # else: legacy
                if c is not None and c.owner == owner:
                    self.claims.done(key, owner)
                continue
            self._fail(t.number, "interrupted")
            retried += 1
            if c is not None and c.owner == owner and c.state == "running":
                self.claims.release(c.spec_key, owner)  # c is claims[key]
        for t in self.study.get_trials(deepcopy=False, states=(OptunaState.WAITING,)):
            self._fail_waiting(t._trial_id)
        return retried

    # -- planning and asking -----------------------------------------------------------------
    def enqueue(self, specs: Iterable[TrialSpec], done_keys: set[str], space_id: str = "",
                sampler: Literal["grid", "tpe"] = "grid", seed: int = 0,
                objective: Objective = "request") -> int:
        """Plan ``specs`` (in order) under ``space_id``; returns how many are not done yet.
        Nothing is written: settings are claimed one at a time when asked, in plan order
        (grid) or as the TPE sampler proposes from the study's finished trials (tpe), on the
        request time or on the Pareto axes (``objective``)."""
        self.plan = {s.key(): s for s in specs}
        self.objective = objective
        self._tpe = TpeOrder(self.plan, seed, objective) if sampler == "tpe" else None
        self._taken = set()
        self.space_id = space_id
        self._done = set(done_keys) | self._guard(self.claims.done_keys)
        self._order = [k for k in self.plan if k not in self._done]
        self._cursor = 0
        self._guard(self.claims.start_heartbeat)
        return len(self._order)

    @property
    def tpe(self) -> TpeOrder | None:
        """The model-based order in force (None: the grid's)."""
        return self._tpe

    def history(self) -> list[Finished]:
        """The plan's finished trials in the order they were created: objectives (a pruned
        trial's partial one, above the best's slowest repetition: clearly worse), or None for
        settings that ran out of memory, were over --max-vram, crashed, timed out or failed
        (interrupted and superseded trials are left out: they say nothing of the setting)."""
        def read() -> list[Finished]:
            out = []
            # The Pareto axes come from the records (usable ones only: an unverified trial or
            # one over --max-vram teaches the sampler as a failure).
            points = {r.number: point_of(r) for r in self.store.records() if r.usable} \
                if self.objective == "pareto" else {}
            for t in self.study.get_trials(deepcopy=False, states=(
                    OptunaState.COMPLETE, OptunaState.PRUNED, OptunaState.FAIL)):
                key = t.user_attrs.get("spec_key")
                if key not in self.plan:
                    continue
                if t.state in (OptunaState.COMPLETE, OptunaState.PRUNED):
                    out.append(Finished(key, t.value, points.get(t.number)))
                elif t.user_attrs.get("tuner_state") in ("infeasible", "crashed", "timeout",
                                                         "failed"):
                    out.append(Finished(key, None))
            return out
        return self._guard(read)

    def _next_key(self) -> str | None:
        if self._tpe is None:
            if self._cursor >= len(self._order):
                return self._orphaned()
            self._cursor += 1
            return self._order[self._cursor - 1]
        open_keys = [k for k in self._order if k not in self._done and k not in self._taken]
        return self._tpe.pick(open_keys, self.history()) or self._orphaned()

    def _orphaned(self) -> str | None:
        """A setting another sweep held when this one asked, whose owner is gone since (its
        heartbeat stale, or its claim released): ``ask`` claims it again and fails the dead
        owner's trial, so a host that dies while others run costs no setting of the study."""
        claims = {c.spec_key: c for c in self._guard(self.claims.all)}
        for key in sorted(self._taken - self._done):
            c = claims.get(key)
            if c is not None and c.state == "done":
                self._done.add(key)
            elif c is None or is_stale(c):
                self._taken.discard(key)
                return key
        return None

    def ask(self) -> tuple[int, TrialSpec] | None:
        """The next setting of the plan that no sweep has done or is running, claimed for this
        process, with its optuna trial created RUNNING."""
        while (key := self._next_key()) is not None:
            taken, old = self._guard(lambda: self.claims.claim(key))
            if not taken:
                if old is not None and old.state == "done":
                    self._done.add(key)
                self._taken.add(key)
                continue
            if old is not None and old.trial_number is not None:  # a dead sweep's trial
                self._guard(functools.partial(self._fail, old.trial_number, "interrupted"))
            number = self._guard(lambda: self._create(key))
            self._done.add(key)
            return number, self.plan[key]
        return None

    def _create(self, key: str) -> int:
        spec = self.plan[key]
        template = optuna.trial.create_trial(state=OptunaState.RUNNING, user_attrs={
            "spec_key": key, "spec": spec.model_dump_json(), "space_id": self.space_id,
            "owner": self.claims.owner})
        trial_id = self.storage.create_new_trial(self.study._study_id, template)
        number = self.storage.get_trial_number_from_id(trial_id)
        self.claims.set_number(key, number)
        return number

    def tell(self, number: int, record: TrialRecord) -> None:
        """Store the trial's record with it, tell optuna its result and mark its setting done
        for every sweep. The record goes first: a sweep killed before the state is told leaves
        a RUNNING trial holding its record, which the next sweep's reconcile tells."""
        def tell() -> None:
            self._tell(number, record)
            self.claims.done(record.spec_key)
        self._guard(tell)

    def _tell(self, number: int, record: TrialRecord, store: bool = True) -> None:
        storage = self.storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        if storage.get_trial(trial_id).state.is_finished():
            return  # told already (by this sweep's release or another sweep's reconcile)
        if store:
            self.store.put_record(trial_id, record)
        storage.set_trial_user_attr(trial_id, "tuner_state", record.state.value)
        storage.set_trial_user_attr(trial_id, "verified", record.verification.verified)
        storage.set_trial_user_attr(trial_id, "trial_id", record.trial_id)
        if record.usable:
            self.study.tell(number, values=record.objective, skip_if_finished=True)
        elif record.state is TrialState.PRUNED and record.objective is not None:
            # Its partial objective (tuner/search/pruning.py) as the intermediate value at the step
            # of its kept repetitions: optuna makes it the pruned trial's value.
            m = record.measurement
            step = len(m.request_seconds.samples) if m is not None else 0
            storage.set_trial_intermediate_value(trial_id, step, record.objective)
            self.study.tell(number, state=OptunaState.PRUNED, skip_if_finished=True)
        else:
            self.study.tell(number, state=OptunaState.FAIL, skip_if_finished=True)

    def _fail(self, number: int, why: str) -> None:
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(
            self.study._study_id, number)
        if self.storage.get_trial(trial_id).state.is_finished():
            return
        self.storage.set_trial_user_attr(trial_id, "tuner_state", why)
        self.study.tell(number, state=OptunaState.FAIL, skip_if_finished=True)

    def _fail_waiting(self, trial_id: int) -> None:
        try:  # another sweep may take or close it at the same moment
            self.storage.set_trial_user_attr(trial_id, "tuner_state", "superseded")
            self.storage.set_trial_state_values(trial_id, state=OptunaState.FAIL)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            pass

    # -- the end of a sweep ------------------------------------------------------------------
    def release(self) -> None:
        """On an interrupted sweep: each setting this process still holds is told its stored
        record, or failed and released so the next sweep runs it again. Best effort."""
        self.claims.stop_heartbeat()
        try:
            by_number = {r.number: r for r in self.records()}
        except TunerError:
            by_number = {}
        for c in self.claims.mine():
            try:
                rec = by_number.get(c.trial_number) if c.trial_number is not None else None
                if c.trial_number is not None and rec is not None and rec.spec_key == c.spec_key:
                    self._guard(functools.partial(self._tell, c.trial_number, rec, store=False))
                    self._guard(functools.partial(self.claims.done, c.spec_key))
                    continue
                if c.trial_number is not None:
                    self._fail(c.trial_number, "interrupted")
                self.claims.release(c.spec_key)
            except (TunerError, sa.exc.SQLAlchemyError, RuntimeError, ValueError):
                continue

    def others_running(self) -> int:
        """How many trials other live sweeps of this study are running now."""
        return len(self._guard(self.claims.others_running))

    def claim_config(self, out: Path) -> Literal["write", "written", "busy"]:
        """Whether this sweep decides the finalists and writes the production config at
        ``out``: "write" (it holds the right to now), "written" (a sweep that ended after this
        one started already wrote it), "busy" (another sweep is deciding or writing it). One
        right per config path, whatever the winner: two sweeps ending together could otherwise
        crown different finalists and both write."""
        where = hashlib.sha256(str(Path(out).absolute()).encode()).hexdigest()[:12]
        key = f"{CONFIG_PREFIX}{where}"

        def claim() -> Literal["write", "written", "busy"]:
            taken, old = self.claims.claim(key)
            if not taken and old is not None and old.state == "done":
                if old.heartbeat >= self.started and Path(out).exists():
                    return "written"
                taken = self.claims.retake(old)
            if taken:
                self._config_key = key
                return "write"
            return "busy"
        return self._guard(claim)

    def config_written(self) -> None:
        if key := self._config_key:
            self._guard(lambda: self.claims.done(key))
            self._config_key = None

    def release_config(self) -> None:
        """After a failed write: let another sweep (or the next) write it."""
        if key := self._config_key:
            self._guard(lambda: self.claims.release(key))
            self._config_key = None

    def close(self) -> None:
        self.claims.stop_heartbeat()
