"""What happened to one trial, as the parent saw it: the worker's typed reply when it gave one,
else how the worker ended. Its state is the record's ``TrialState`` (one declaration of the
outcomes: complete, pruned, infeasible, crashed, timeout, failed)."""

from __future__ import annotations

from pydantic import Field, model_validator

from tuner.results.readings import TrialState
from tuner.specs import Frozen
from tuner.worker.protocol import Measured, Ready, TrialFailed


class Outcome(Frozen):
    """``reply``: the worker's answer to the trial (``Measured`` exactly when complete or
    pruned, its ``pruned`` reason set exactly when pruned;
    ``TrialFailed`` for an infeasible or failed trial the worker reported itself; None when the
    worker died, overran or never loaded). ``hello``: the loaded worker's ``Ready``."""

    state: TrialState
    reply: Measured | TrialFailed | None = None
    error: str | None = None
    signal: str | None = None  # the signal that killed the worker (crashed)
    log_tail: list[str] = Field(default_factory=list)
    load_log: str = ""
    hello: Ready | None = None
    worker_id: str | None = None

    @model_validator(mode="after")
    def _complete_means_measured(self) -> Outcome:
        if (self.state in (TrialState.COMPLETE, TrialState.PRUNED)) != isinstance(
                self.reply, Measured):
            raise ValueError("an outcome is complete or pruned exactly when the worker "
                             "measured it")
        if isinstance(self.reply, Measured) and (
                (self.state is TrialState.PRUNED) != (self.reply.pruned is not None)):
            raise ValueError("an outcome is pruned exactly when the worker pruned it")
        return self

    @property
    def measured(self) -> Measured | None:
        return self.reply if isinstance(self.reply, Measured) else None

    @property
    def trial_log(self) -> str:
        """llama.cpp's log of the trial's context, when the worker answered."""
        return self.reply.log if self.reply is not None else ""
