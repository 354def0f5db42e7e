"""The drift sentinel and the finalists on real workers (CPU build, a real tiny GGUF): bounded
worker lives, the first trial measured again when a worker ends, drift told apart from noise,
NVML fields null without a GPU, and a whole sweep whose leaders are re-measured in fresh
workers."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli_run import tuner
from tuner.results.store import study_dir
from tuner.results.studystore import default_storage, records_of, require_study
from tuner.specs import ContextSettings, ModelSettings, TrialSpec, Workload
from tuner.sweep.drift import worker_drift
from tuner.worker.protocol import Measured
from tuner.worker.runner import Runner, SentinelResult

CPU = ModelSettings(device="cpu", build="installed")
WL = Workload(prompt_tokens=32, gen_tokens=4, repetitions=2, warmup=0)


def spec(n_batch: int) -> TrialSpec:
    return TrialSpec(model=CPU, context=ContextSettings(n_batch=n_batch, n_ubatch=16,
                                                        n_threads=1))


def test_workers_live_bounded_lives_and_end_with_a_sentinel(tiny_model: Path,
                                                            tmp_path: Path) -> None:
    seen: list[SentinelResult] = []
    with Runner(tiny_model, tmp_path, {"installed": None}, trials_per_worker=2,
                on_sentinel=seen.append) as runner:
        outs = [runner.run(spec(b), WL, number=i) for i, b in enumerate((16, 32, 16))]
    assert [o.state for o in outs] == ["complete"] * 3, [o.error for o in outs]
    assert outs[0].worker_id == outs[1].worker_id != outs[2].worker_id
    assert [(s.first_number, s.numbers) for s in seen] == [(0, [0, 1]), (2, [2])]
    assert [s.worker_id for s in seen] == [outs[0].worker_id, outs[2].worker_id]
    for s in seen:
        assert len(s.end.pp_seconds) == WL.repetitions
        d = worker_drift("study", s, WL)
        assert d.pp_tps_start and d.pp_tps_end and d.tg_tps_start and d.tg_tps_end
        assert d.noise >= 0.02 and d.trials == s.numbers
    # No GPU here: the NVML fields are present and null.
    assert all(o.measured.clocks is None and o.measured.gpu_peak_mib is None for o in outs)
    # The log callback is back after each timed region: the next context's lines were captured.
    assert "n_batch               = 32" in outs[1].measured.log


def test_no_sentinel_when_switched_off(tiny_model: Path, tmp_path: Path) -> None:
    seen: list[SentinelResult] = []
    with Runner(tiny_model, tmp_path, {"installed": None}, trials_per_worker=1, sentinel=False,
                on_sentinel=seen.append) as runner:
        assert runner.run(spec(16), WL).state == "complete"
    assert seen == []


def _answer(pp_s: list[float], tg_s: list[float]) -> Measured:
    return Measured(pp_seconds=pp_s, tg_seconds=tg_s, context_seconds=0.0, warmups={},
                    threads=1, gpu_peak_mib=None, gpu_total_mib=None, clocks=None, log="",
                    op_log=None, op_error=None)


def test_drift_beyond_the_noise_is_significant_and_within_it_is_not() -> None:
    first = _answer([0.10, 0.101, 0.1005], [0.040, 0.0402, 0.0401])
    slower = _answer([0.10, 0.1005, 0.1003], [0.046, 0.0461, 0.0459])  # tg 13% slower
    same = _answer([0.1002, 0.1004, 0.1001], [0.0401, 0.0403, 0.0402])
    noisy = _answer([0.10, 0.13, 0.08], [0.046, 0.030, 0.055])
    wl = Workload(prompt_tokens=2048, gen_tokens=128)
    d = worker_drift("s", SentinelResult("h:1", "b", 0, [0, 1, 2], first, slower), wl)
    assert d.significant and d.tg_drift is not None and -0.14 < d.tg_drift < -0.12
    assert not worker_drift("s", SentinelResult("h:1", "b", 0, [0], first, same), wl).significant
    loud = worker_drift("s", SentinelResult("h:1", "b", 0, [0], first, noisy), wl)
    assert not loud.significant and loud.noise > 0.3


def test_a_sweep_remeasures_its_leaders_and_writes_the_decision(tiny_model: Path,
                                                                tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("n_batch: [16, 32]\nn_ubatch: [16]\nkv_cache: [f16/f16]\nn_threads: [1]\n")
    out = tmp_path / "prod.yaml"
    args = ("sweep", "--model", tiny_model, "--device", "cpu", "--space", space,
            "--prompt-tokens", 32, "--gen-tokens", 4, "--repetitions", 2, "--results",
            tmp_path / "r", "--study", "fin", "--out", out, "--finalist-rounds", 2,
            "--served-requests", 0)
    proc = tuner(*args)
    assert proc.returncode == 0, proc.stderr
    report = require_study(default_storage(tmp_path / "r"), "fin").finalists()
    assert report is not None and len(report.finalists) == 2
    # Two rounds each; an undecided pair gets more, with the leader, up to twice the rounds.
    assert all(2 <= f.rounds <= 4 and f.samples == 2 * f.rounds and f.verified
               for f in report.finalists)
    leader = next(f for f in report.finalists if f.trial == report.leader_trial)
    assert all(f.rounds <= leader.rounds for f in report.finalists)
    # The confirmation measured both in two fresh workers first (those are the finalists'
    # first two rounds): figures over three processes, the search trial's first.
    assert sorted(c.trial for c in report.confirmed) == sorted(f.trial for f in report.finalists)
    for c in report.confirmed:
        assert c.processes == 3 and c.failed_rounds == 0 and c.verified
        own = next(r for r in records_of(default_storage(tmp_path / "r"), "fin")
                   if r.number == c.trial)
        assert own.measurement is not None
        assert c.request_seconds.samples[0] == own.measurement.request_seconds.median
    assert report.winner_trial in {r.number for r in records_of(default_storage(tmp_path / "r"), "fin")}
    side = json.loads(out.with_name("prod.tuner.json").read_text())
    assert side["finalists"]["winner_trial"] == report.winner_trial
    assert len(side["finalists"]["confirmed"]) == len(report.confirmed)
    assert side["provenance"]["number"] == report.winner_trial
    assert "finalists re-measured in fresh workers" in proc.stdout
    # Both configs share the model settings: every round is one fresh process measuring both
    # (finalists.PER_WORKER), after the search's one worker.
    logs = list(study_dir(tmp_path / "r", "fin").glob("logs/worker-*.log"))
    assert len(logs) == 1 + leader.rounds
    drifts = require_study(default_storage(tmp_path / "r"), "fin").drifts()
    assert len(drifts) == 1 and drifts[0].trials == [0, 1]  # one worker, two trials
    # A re-run of the finished study decides from what is stored: nothing is measured again.
    again = tuner(*args)
    assert again.returncode == 0, again.stderr
    assert require_study(default_storage(tmp_path / "r"), "fin").finalists() == report
    assert len(require_study(default_storage(tmp_path / "r"), "fin").drifts()) == 1
