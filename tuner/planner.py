"""The study: which trial runs next. An optuna study (ask / tell) holds the plan in its storage:
grid points are enqueued once, asked one at a time and told their result, so a sweep killed at
any moment resumes where it stopped. No subprocess code here."""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState as OptunaState

from tuner.errors import BadInput
from tuner.records import TrialRecord
from tuner.specs import TrialSpec

optuna.logging.set_verbosity(logging.WARNING)


def _params(spec: TrialSpec) -> dict[str, Any]:
    m, c = spec.model, spec.context
    return {"build": m.build, "n_gpu_layers": m.n_gpu_layers, "cuda_graphs": m.cuda_graphs,
            "n_batch": c.n_batch, "n_ubatch": c.n_ubatch, "flash_attn": c.flash_attn,
            "kv_cache": f"{c.type_k}/{c.type_v}", "n_threads": c.n_threads or 0}


def _distributions(specs: list[TrialSpec]) -> dict[str, CategoricalDistribution]:
    values: dict[str, list[Any]] = {}
    for s in specs:
        for k, v in _params(s).items():
            values.setdefault(k, [])
            if v not in values[k]:
                values[k].append(v)
    return {k: CategoricalDistribution(v) for k, v in values.items()}


class Planner:
    def __init__(self, study: str, storage: str) -> None:
        try:
            self.study = optuna.create_study(study_name=study, storage=storage,
                                             direction="minimize", load_if_exists=True)
        except (ValueError, ImportError, optuna.exceptions.StorageInternalError) as e:
            raise BadInput(f"cannot open study storage {storage}: {str(e).splitlines()[0]}") from None
        self.plan: dict[str, TrialSpec] = {}
        self.distributions: dict[str, CategoricalDistribution] = {}

    def reconcile(self, records: list[TrialRecord]) -> int:
        """Close trials a killed sweep left RUNNING: told their result if the record reached the
        store, failed (and so retried) if not. Returns how many will be retried."""
        by_number = {r.number: r for r in records}
        retried = 0
        for t in self.study.get_trials(deepcopy=False, states=(OptunaState.RUNNING,)):
            rec = by_number.get(t.number)
            if rec is not None and rec.spec_key == t.user_attrs.get("spec_key"):
                self.tell(t.number, rec)
            else:
                self.study.tell(t.number, state=OptunaState.FAIL)
                retried += 1
        return retried

    def enqueue(self, specs: list[TrialSpec], done_keys: set[str]) -> int:
        """Queue every planned spec not yet done nor already queued; returns the queue length."""
        self.plan = {s.key(): s for s in specs}
        self.distributions = _distributions(specs)
        waiting = {t.user_attrs.get("spec_key")
                   for t in self.study.get_trials(deepcopy=False, states=(OptunaState.WAITING,))}
        for key, spec in self.plan.items():
            if key in done_keys or key in waiting:
                continue
            self.study.enqueue_trial(_params(spec), user_attrs={"spec_key": key,
                                                                 "spec": spec.model_dump_json()})
        return sum(1 for t in self.study.get_trials(deepcopy=False, states=(OptunaState.WAITING,))
                   if t.user_attrs.get("spec_key") in self.plan and
                   t.user_attrs.get("spec_key") not in done_keys)

    def ask(self) -> tuple[int, TrialSpec] | None:
        """The next queued spec of the current plan; queued specs of an older plan (another
        search space) are failed as superseded."""
        while self.study.get_trials(deepcopy=False, states=(OptunaState.WAITING,)):
            trial = self.study.ask(self.distributions)
            key = trial.user_attrs.get("spec_key")
            if key in self.plan:
                return trial.number, self.plan[key]
            trial.set_user_attr("tuner_state", "superseded")
            self.study.tell(trial, state=OptunaState.FAIL)
        return None

    def tell(self, number: int, record: TrialRecord) -> None:
        storage = self.study._storage  # user attrs of a trial asked in another process
        trial_id = storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        storage.set_trial_user_attr(trial_id, "tuner_state", record.state.value)
        storage.set_trial_user_attr(trial_id, "verified", record.verification.verified)
        storage.set_trial_user_attr(trial_id, "trial_id", record.trial_id)
        if record.usable:
            self.study.tell(number, values=record.objective, skip_if_finished=True)
        else:
            self.study.tell(number, state=OptunaState.FAIL, skip_if_finished=True)
