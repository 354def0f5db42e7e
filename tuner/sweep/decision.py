"""The sweep's decision, as pure functions of the study's records: the best trial, why there
is no config, whether a stored finalist decision still holds, and what the production config
is written with (the build's library, the environment)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from tuner.deploy.servedfinal import served_error
from tuner.results.records import FinalistReport, ServedFigures, TrialRecord
from tuner.sweep.probing import BuildProbe

# Trials in a row dying the same way (the same state, signal and last log line), none complete,
# after which a sweep stops: the same death on this many different settings is the build's or
# the machine's, not a setting's, and the rest of the plan would die alike.
DEATHS_TO_STOP = 5


def best(records: list[TrialRecord], planned: set[str]) -> TrialRecord | None:
    usable = [r for r in records if r.usable and r.spec_key in planned]
    return min(usable, key=objective) if usable else None


def objective(r: TrialRecord) -> float:
    """A usable record's objective: ``usable`` is only true where it is set."""
    return cast(float, r.objective)


def why_no_config(records: list[TrialRecord]) -> str:
    if not records:
        return "no trial has run yet"
    complete = [r for r in records if r.state.value == "complete"]
    if not complete:
        states = sorted({r.state.value for r in records})
        return f"no trial completed (states: {', '.join(states)})"
    reasons = sorted({r.verification.reasons[0] for r in complete if r.verification.reasons})
    return "no completed trial was verified: " + "; ".join(reasons[:3])


# Why a sweep leaves the config to another: it still runs trials of the study.
OTHERS_RUNNING = ("another sweep of this study is still running trials; the last one to end "
                  "writes the production config")


def claim_refusal(verdict: str, out: Path) -> str | None:
    """Why this sweep does not write the config, by its claim's ``verdict``
    (tuner/search/planner.py): another sweep wrote it or is writing it; None: this one does."""
    if verdict == "write":
        return None
    return (f"another sweep of this study wrote it to {out}" if verdict == "written"
            else "another sweep of this study is writing it")


def pool_keys(report: FinalistReport) -> set[str]:
    """The configs a stored decision re-measured: its confirmed ones, else its finalists."""
    return {f.spec_key for f in (report.confirmed or report.finalists)}


def stored_served(report: FinalistReport) -> tuple[ServedFigures | None, int | None]:
    win = next((f for f in report.finalists if f.trial == report.winner_trial), None)
    if win is None or not win.served or "error" in win.served:
        return None, None
    fig = ServedFigures.model_validate(win.served)
    return fig, fig.n_threads


def no_served(served_requests: int, final: FinalistReport | None) -> str:
    """Why the production config has no served figures: the sidecar says so."""
    if final is None:
        return ("not measured: no finalists were re-measured (served figures are taken of "
                "the finalists)")
    if served_requests <= 0:
        return "not measured: --served-requests 0"
    return served_error(final) or "not measured"


def config_env(winner: TrialRecord, probe: BuildProbe | None) -> dict[str, str]:
    """The environment the service runs the winner with: its build's library, and CUDA graphs
    off where the trial ran without them."""
    env_vars = {}
    if probe is not None and probe.lib_dir:
        env_vars["LLAMA_CPP_LIB_PATH"] = probe.lib_dir
    if not winner.spec.model.cuda_graphs:
        env_vars["GGML_CUDA_DISABLE_GRAPHS"] = "1"
    return env_vars
