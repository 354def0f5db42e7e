"""Record building (tuner/worker/trialrecord.py ``measurement``): the statistics of a worker's
repetitions, a pruned trial's partial figures, and the instability flag of each phase."""

from __future__ import annotations

import pytest

from tuner.specs import Workload
from tuner.worker.protocol import Measured
from tuner.worker.trialrecord import UNSTABLE_SPREAD, measurement

WL = Workload(prompt_tokens=2048, gen_tokens=128, repetitions=3, warmup=1)


def measured(pp: list[float], tg: list[float], pruned: str | None = None) -> Measured:
    return Measured(pp_seconds=pp, tg_seconds=tg, context_seconds=0.05, warmups={"pp": 1, "tg": 1},
                    threads=16, gpu_peak_mib=5000.0, gpu_total_mib=81559.0, clocks=None, log="",
                    op_log=None, op_error=None, pruned=pruned)


def test_figures_are_the_statistics_of_the_kept_repetitions() -> None:
    m = measurement(measured([0.064, 0.065, 0.066], [0.32, 0.33, 0.34]), WL, load_seconds=1.5)
    assert m.request_seconds.samples == pytest.approx([0.384, 0.395, 0.406])
    assert m.request_seconds.median == pytest.approx(0.395)
    assert m.pp_tps.median == pytest.approx(2048 / 0.065)
    assert m.tg_tps is not None and m.tg_tps.median == pytest.approx(128 / 0.33)
    assert m.pp_tps.min == pytest.approx(2048 / 0.066) and m.pp_tps.max == pytest.approx(2048 / 0.064)
    assert (m.load_seconds, m.gpu_peak_mib, m.threads) == (1.5, 5000.0, 16)
    assert not m.unstable and not m.throttled and m.clocks is None


def test_a_trial_pruned_in_its_prompt_phase_keeps_its_prompt_seconds_as_the_request() -> None:
    m = measurement(measured([0.09, 0.091], [], pruned="slower"), WL, load_seconds=1.0)
    assert m.request_seconds.samples == [0.09, 0.091]  # lower bounds: no generation was timed
    assert m.tg_tps is None and m.tg_seconds is None


def test_a_level_change_in_one_phase_flags_the_trial_unstable() -> None:
    # Run 11 (docs/benchmarks.md): the prompt fell from 24,950 to 19,546 t/s between repetitions
    # while generation held; the request time, dominated by generation, moved under 10%.
    pp = [2048 / x for x in (24950, 20389, 19546)]
    tg = [128 / x for x in (392.0, 392.4, 392.8)]
    m = measurement(measured(pp, tg), WL, load_seconds=1.0)
    assert m.request_seconds.rel_spread < UNSTABLE_SPREAD < m.pp_tps.rel_spread
    assert m.unstable
    steady = measurement(measured([2048 / x for x in (24950, 24800, 24700)], tg), WL, 1.0)
    assert not steady.unstable
