"""Finalist selection, intervals and the decision between leaders (tuner/search/finalists.py), on
records made by tests/records_factory.py and on rounds given directly: the statistics are what
is tested here; tests/test_sentinel.py runs the re-measurement on real workers."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from tests.records_factory import make_record
from tuner.results.records import TrialRecord, TrialState, WorkerDrift
from tuner.search.finalists import (
    EQUIVALENT,
    FinalistOptions,
    MeasureRound,
    _Round,
    candidates,
    confirm,
    confirm_and_settle,
    decide,
    remeasure,
    select,
    settle,
    turned,
    workers,
)
from tuner.specs import TrialSpec


def rounds_of(request_s: list[float], gpu_mib: float | None = 1000.0) -> list[_Round]:
    return [_Round(request_s=r, pp_tps=2048 / (0.2 * r), tg_tps=128 / (0.8 * r), gpu_mib=gpu_mib,
                   verified=True) for r in request_s]


def drift(pp: float, tg: float, significant: bool = True) -> WorkerDrift:
    return WorkerDrift(study="s", worker_id="h:1", build="installed", first_trial=0, trials=[0, 1],
                       pp_tps_start=1.0, pp_tps_end=1.0 + pp, tg_tps_start=1.0,
                       tg_tps_end=1.0 + tg, pp_drift=pp, tg_drift=tg, noise=0.02,
                       significant=significant, measured_at="t")


def test_select_takes_the_top_and_everything_close_to_the_best() -> None:
    recs = [make_record(i, request_s=t, n_batch=512 * (i + 1))
            for i, t in enumerate([1.00, 1.02, 1.05, 1.10, 1.029, 1.50])]
    recs.append(make_record(9, request_s=0.5, verified=False, n_batch=9999))  # unproven: out
    planned = {r.spec_key for r in recs}
    chosen = select(recs, planned, [], FinalistOptions(top=2, within=0.03))
    assert [r.number for r in chosen] == [0, 1, 4]  # top 2, plus #4 within 3% of the best


def test_a_drifted_worker_widens_the_margin() -> None:
    recs = [make_record(i, request_s=t, n_batch=512 * (i + 1))
            for i, t in enumerate([1.00, 1.05, 1.08, 1.20])]
    planned = {r.spec_key for r in recs}
    narrow = select(recs, planned, [], FinalistOptions(top=1, within=0.03))
    wide = select(recs, planned, [drift(-0.01, -0.09)], FinalistOptions(top=1, within=0.03))
    assert [r.number for r in narrow] == [0]
    assert [r.number for r in wide] == [0, 1, 2]


def test_an_unstable_trial_is_judged_by_its_fastest_repetition() -> None:
    # #1 and #2 have the same median, 8% behind; #1's repetitions spread 20% (a level change
    # mid-trial), and its fastest one is within 3% of the best: the finalists settle it.
    recs = [make_record(0, request_s=1.00), make_record(1, request_s=1.08, spread=0.20, n_batch=1024),
            make_record(2, request_s=1.08, n_batch=2048)]
    assert recs[1].measurement is not None and recs[1].measurement.unstable
    chosen = select(recs, {r.spec_key for r in recs}, [], FinalistOptions(top=1, within=0.03))
    assert [r.number for r in chosen] == [0, 1]


def test_select_ignores_settings_outside_the_plan_and_caps_the_count() -> None:
    recs = [make_record(i, request_s=1.0 + i * 0.001, n_batch=512 * (i + 1)) for i in range(10)]
    planned = {r.spec_key for r in recs[1:]}
    chosen = select(recs, planned, [], FinalistOptions(top=3, within=0.05, most=4))
    assert [r.number for r in chosen] == [1, 2, 3, 4]


def test_a_clear_winner_beats_the_runner_up_beyond_the_interval() -> None:
    a, b = make_record(0, request_s=1.0), make_record(1, request_s=1.1, n_batch=1024)
    got = {a.spec_key: rounds_of([1.00, 1.01, 0.99, 1.00, 1.005]),
           b.spec_key: rounds_of([1.10, 1.12, 1.09, 1.11, 1.10])}
    rep = decide("s", [a, b], got)
    assert rep is not None and not rep.tie
    assert rep.winner_trial == rep.leader_trial == 0
    second = rep.finalists[1]
    assert second.trial == 1 and second.ratio_to_leader.low > 1.0
    assert second.ratio_to_leader.low < second.ratio_to_leader.value < second.ratio_to_leader.high
    first = rep.finalists[0]
    assert first.request_seconds.low < 1.001 < first.request_seconds.high
    assert "faster than the runner-up #1" in rep.reason


def test_a_tie_goes_to_the_lighter_config() -> None:
    fast_heavy = make_record(0, request_s=1.0, build="force-cublas")
    light = make_record(1, request_s=1.01, n_batch=1024)
    # Paired by round, the light config is within +-0.6% of the heavy one: not slower beyond
    # the interval, and proven within 1%.
    heavy = [1.00, 1.03, 0.98, 1.02, 0.99]
    got = {fast_heavy.spec_key: rounds_of(heavy, gpu_mib=9000.0),
           light.spec_key: rounds_of([h * k for h, k in zip(heavy, [1.004, 0.997, 1.006, 0.998,
                                                                     1.003])], gpu_mib=8000.0)}
    rep = decide("s", [fast_heavy, light], got)
    assert rep is not None and rep.tie and not rep.undecided
    assert rep.leader_trial == 0 and rep.winner_trial == 1
    assert rep.finalists[1].ratio_to_leader.high <= 1 + EQUIVALENT
    assert rep.reason.startswith("tie:") and "#1 is the lighter config" in rep.reason


def test_a_lighter_config_that_may_be_over_1_percent_slower_does_not_win() -> None:
    # Run 5 of docs/benchmarks.md: a lighter config within the noise but with an interval up to
    # 3.4% slower; the old rule crowned it, and llama-bench put it 2.5-4% behind the best.
    fast_heavy = make_record(0, request_s=1.0, build="force-cublas")
    light = make_record(1, request_s=1.01, n_batch=1024)
    got = {fast_heavy.spec_key: rounds_of([1.00, 1.03, 0.98, 1.02, 0.99], gpu_mib=9000.0),
           light.spec_key: rounds_of([1.02, 0.99, 1.03, 1.00, 1.01], gpu_mib=8000.0)}
    rep = decide("s", [fast_heavy, light], got)
    assert rep is not None and not rep.tie and rep.undecided == [1]
    assert rep.finalists[1].ratio_to_leader.low <= 1.0 < 1.02 < rep.finalists[1].ratio_to_leader.high
    assert rep.winner_trial == rep.leader_trial == 0
    assert "fastest mean is kept" in rep.reason and rep.equivalent == EQUIVALENT == 0.01


def test_undecided_finalists_get_more_rounds_until_decided_or_the_cap() -> None:
    a, b, c = (make_record(0, request_s=1.0), make_record(1, request_s=1.0, n_batch=1024),
               make_record(2, request_s=1.3, n_batch=2048))
    # Scripted request times per config (the statistics under test, not the measuring: real
    # workers re-measure finalists in tests/test_sentinel.py). a and b alternate so that five
    # rounds leave b undecided; with more rounds b's paired ratio narrows to within 1%.
    script = {a.spec_key: iter([1.00, 1.01, 0.995, 1.005, 1.00] + [1.00] * 20),
              b.spec_key: iter([1.005, 1.00, 1.005, 0.995, 1.01] + [1.001] * 20),
              c.spec_key: iter([1.30] * 20)}
    calls: list[int] = []

    def measure(spec: TrialSpec) -> TrialRecord:
        rec = next(r for r in (a, b, c) if r.spec_key == spec.key())
        calls.append(rec.number)
        return make_record(rec.number, request_s=next(script[rec.spec_key]),
                           n_batch=spec.context.n_batch)

    rep = settle("s", [a, b, c], each(measure), FinalistOptions(rounds=5, max_rounds=10))
    assert rep is not None and not rep.undecided
    # Every round measures each finalist once; the order turns by one place per round.
    assert calls[:15] == [0, 1, 2, 1, 2, 0, 2, 0, 1, 0, 1, 2, 1, 2, 0]
    assert set(calls[15:]) == {0, 1}  # the clearly slower c gets no extra round
    assert 15 < len(calls) <= 15 + 2 * 5
    capped = settle("s", [a, b], each(measure), FinalistOptions(rounds=2, max_rounds=2))
    assert capped is not None and len([f for f in capped.finalists if f.rounds == 2]) == 2


def test_with_equal_memory_a_tie_prefers_the_plain_build() -> None:
    special = make_record(0, request_s=1.0, build="force-mmq")
    plain = make_record(1, request_s=1.0, build="default")
    got = {special.spec_key: rounds_of([1.00, 1.02, 0.99, 1.01]),
           plain.spec_key: rounds_of([1.003, 1.018, 0.992, 1.007])}
    rep = decide("s", [special, plain], got)
    assert rep is not None and rep.tie and rep.winner_trial == 1


def test_no_rounds_no_decision_and_one_finalist_wins_alone() -> None:
    a = make_record(0, request_s=1.0)
    assert decide("s", [a], {a.spec_key: []}) is None
    rep = decide("s", [a], {a.spec_key: rounds_of([1.0, 1.1, 0.9])})
    assert rep is not None and rep.winner_trial == 0 and not rep.tie
    assert rep.finalists[0].samples == 3 * a.workload.repetitions


def test_an_unproven_remeasurement_never_leads() -> None:
    a, b = make_record(0, request_s=1.0), make_record(1, request_s=1.2, n_batch=1024)
    ra = rounds_of([0.9, 0.91, 0.9])
    for r in ra:
        r.verified = False
    rep = decide("s", [a, b], {a.spec_key: ra, b.spec_key: rounds_of([1.2, 1.21, 1.19])})
    assert rep is not None and rep.leader_trial == 1 and rep.winner_trial == 1


def test_one_round_gives_no_interval_and_so_no_tie() -> None:
    a, b = make_record(0, request_s=1.0), make_record(1, request_s=1.5, n_batch=1024)
    rep = decide("s", [a, b], {a.spec_key: rounds_of([1.0], gpu_mib=2000.0),
                               b.spec_key: rounds_of([1.5], gpu_mib=1000.0)})
    # Nothing is proven either way: the lighter b does not win, the fastest mean is kept.
    assert rep is not None and not rep.tie and rep.undecided == [1] and rep.winner_trial == 0


def test_an_interval_cut_at_zero_does_not_break_the_overview() -> None:
    # Two rounds of a wide spread: the Student-t interval reaches below zero and is cut there;
    # the report's gap to the runner-up is then unbounded above, not a division by zero.
    from tuner.reports.overview import overview

    a, b = make_record(0, request_s=1.0), make_record(1, request_s=1.1, n_batch=1024)
    # b is within 0.01% of a in both rounds (a tie) and lighter: b wins, and the runner-up's gap is
    # the ratio of two request intervals, both cut at zero.
    rep = decide("s", [a, b], {a.spec_key: rounds_of([0.1, 1.9], gpu_mib=2000.0),
                               b.spec_key: rounds_of([0.09999, 1.90019], gpu_mib=1000.0)})
    assert rep is not None and rep.tie and rep.winner_trial == 1 and rep.leader_trial == 0
    assert all(f.request_seconds.low == 0.0 for f in rep.finalists)
    ov = overview("s", [a, b], rep)
    assert ov.winner is not None and ov.winner.trial == 1


def test_a_finalist_more_rounds_could_not_decide_gets_none() -> None:
    # b is 0.5% behind a with paired ratios 2% apart: at 10 rounds its interval would still
    # reach from below 1 to above 1.01, so the rounds after the first five are not run.
    a, b = make_record(0, request_s=1.0), make_record(1, request_s=1.005, n_batch=1024)
    script = {a.spec_key: iter([1.0] * 20),
              b.spec_key: iter([0.985, 1.025, 0.985, 1.025, 1.005] * 4)}
    calls: list[int] = []

    def measure(spec: TrialSpec) -> TrialRecord:
        rec = next(r for r in (a, b) if r.spec_key == spec.key())
        calls.append(rec.number)
        return make_record(rec.number, request_s=next(script[rec.spec_key]),
                           n_batch=spec.context.n_batch)

    rep = settle("s", [a, b], each(measure), FinalistOptions(rounds=5, max_rounds=10))
    assert rep is not None and rep.undecided == [1] and rep.winner_trial == 0
    assert len(calls) == 10  # five rounds of two, none more
    assert "would stay undecided at 10 rounds" in rep.reason
    # A finalist that more rounds can decide still gets them (the test above), and so does
    # this one when the cap allows enough rounds to narrow its interval below 1%.
    calls.clear()
    script = {a.spec_key: iter([1.0] * 200),
              b.spec_key: iter([0.985, 1.025, 0.985, 1.025, 1.005] * 40)}
    rep = settle("s", [a, b], each(measure), FinalistOptions(rounds=5, max_rounds=200))
    assert rep is not None and len(calls) > 10


def each(one: Callable[[TrialSpec], TrialRecord]) -> MeasureRound:
    """A round's ``measure`` from a per-config one: each spec of the round in its order."""
    return lambda specs: [one(spec) for spec in specs]


def scripted(recs: list[TrialRecord], script: dict[int, Iterator[float | None]],
             calls: list[int]) -> MeasureRound:
    """A ``measure`` that answers each round of trial N with the next request time of
    ``script[N]`` (None: the worker crashed). The statistics are under test here; real
    workers re-measure in tests/test_sentinel.py and tests/test_end_to_end.py."""
    def measure(spec: TrialSpec) -> TrialRecord:
        rec = next(r for r in recs if r.spec_key == spec.key())
        calls.append(rec.number)
        t = next(script[rec.number])
        if t is None:
            return make_record(rec.number, state=TrialState.CRASHED,
                               n_batch=spec.context.n_batch)
        return make_record(rec.number, request_s=t, n_batch=spec.context.n_batch)
    return each(measure)


def test_the_pool_is_the_best_n_and_every_would_be_finalist() -> None:
    recs = [make_record(i, request_s=1.0 + 0.02 * i, n_batch=512 * (i + 1)) for i in range(12)]
    # #11 is 55% behind by its median, but its repetitions spread widely and its fastest one is
    # within 3% of the best: select() would make it a finalist, so the pool keeps it too.
    recs[11] = make_record(11, request_s=1.55, spread=0.8, n_batch=512 * 12)
    planned = {r.spec_key for r in recs}
    pool = candidates(recs, planned, [], FinalistOptions(top=3, confirm=4))
    assert [r.number for r in pool] == [0, 1, 2, 3, 11]
    off = candidates(recs, planned, [], FinalistOptions(top=3, confirm=0))
    assert [r.number for r in off] == [0, 1, 2, 11]  # no confirmation: select()'s finalists


def test_the_pool_leaves_out_configs_far_behind_the_best_unless_drift_widens_the_margin() -> None:
    # 0%, 4%, 7.9%, 8.1%, 12% behind: the last two cannot become finalists (finalists.py's
    # CONFIRM_WITHIN), though the best 10 would take them.
    recs = [make_record(i, request_s=t, n_batch=512 * (i + 1))
            for i, t in enumerate([1.0, 1.04, 1.079, 1.081, 1.12])]
    recs.append(make_record(5, request_s=1.3, build="force-cublas"))  # its build's best
    planned = {r.spec_key for r in recs}
    opts = FinalistOptions(top=1, confirm=10)
    assert [r.number for r in candidates(recs, planned, [], opts)] == [0, 1, 2, 5]
    # A worker that drifted by 10% widens the margin to 10%, as it widens select()'s.
    widened = candidates(recs, planned, [drift(-0.10, 0.0)], opts)
    assert [r.number for r in widened] == [0, 1, 2, 3, 5]
    wide = FinalistOptions(top=1, confirm=10, confirm_within=0.5)
    assert [r.number for r in candidates(recs, planned, [], wide)] == [0, 1, 2, 3, 4, 5]


def test_each_builds_leaders_join_the_pool_whatever_their_rank() -> None:
    # The first build's 12 trials fill the best 10; the second build's best two, measured
    # beside their own compile or in a slower worker, are confirmed too.
    recs = [make_record(i, request_s=1.0 + 0.005 * i, n_batch=512 * (i + 1)) for i in range(12)]
    recs += [make_record(12 + i, request_s=1.3 + 0.1 * i, build="force-cublas",
                         n_batch=512 * (i + 1)) for i in range(3)]
    pool = candidates(recs, {r.spec_key for r in recs}, [], FinalistOptions(top=3, confirm=10))
    assert [r.number for r in pool] == [*range(10), 12, 13]


def test_a_trial_measured_beside_a_compile_counts_only_its_fresh_workers() -> None:
    recs = [make_record(0, request_s=2.0).model_copy(update={"alongside_build": ["force-cublas"]}),
            make_record(1, request_s=1.0, n_batch=1024)]
    script = {0: iter([1.0, 1.0]), 1: iter([1.1, 1.1])}
    confirmed, _ = confirm(recs, scripted(recs, script, []), FinalistOptions(confirm_rounds=2))
    by_trial = {c.trial: c for c in confirmed}
    assert by_trial[0].processes == 2 and by_trial[0].request_seconds.samples == [1.0, 1.0]
    assert by_trial[1].processes == 3 and by_trial[1].request_seconds.samples[0] == 1.0
    assert [c.trial for c in confirmed] == [0, 1]  # the slow search figure did not hold #0 back


def test_confirmation_reranks_on_medians_over_processes() -> None:
    # The search saw #0 fastest in one lucky process; two fresh workers each put it 8% behind
    # #3, which the search had ranked fourth. Medians over three processes pick #3 and #2.
    recs = [make_record(i, request_s=t, n_batch=512 * (i + 1))
            for i, t in enumerate([0.95, 1.00, 1.01, 1.02, 1.20])]
    script = {0: iter([1.10, 1.09] + [1.10] * 9), 1: iter([1.05, 1.06] + [1.05] * 9),
              2: iter([1.01, 1.012] + [1.01] * 9), 3: iter([1.00, 1.001] + [1.00] * 9),
              4: iter([1.2] * 11)}
    calls: list[int] = []
    opts = FinalistOptions(top=1, within=0.03, confirm=4, confirm_rounds=2, rounds=3,
                           max_rounds=3)
    pool = candidates(recs, {r.spec_key for r in recs}, [], opts)
    rep = confirm_and_settle("s", pool, scripted(recs, script, calls), opts)
    assert rep is not None
    assert [c.trial for c in rep.confirmed] == [3, 2, 1, 0]  # fastest median first
    c0 = next(c for c in rep.confirmed if c.trial == 0)
    assert c0.processes == 3 and c0.request_seconds.samples == [0.95, 1.10, 1.09]
    assert c0.request_seconds.median == 1.09 and c0.pp_tps.min < c0.pp_tps.max
    # The confirmation interleaves the pool (A B C D, B C D A), then the finalists, #3 and #2
    # within 3% of the best median, get the one round left to reach 3.
    assert calls[:8] == [0, 1, 2, 3, 1, 2, 3, 0]
    assert sorted(calls[8:]) == [2, 3]
    assert {f.trial for f in rep.finalists} == {2, 3} and rep.winner_trial == 3
    assert all(f.rounds == 3 for f in rep.finalists)


def test_a_config_that_fails_in_a_fresh_worker_is_no_finalist() -> None:
    recs = [make_record(0, request_s=1.0), make_record(1, request_s=1.01, n_batch=1024)]
    script = {0: iter([1.0, None, 1.0, 1.0]), 1: iter([1.01] * 4)}
    calls: list[int] = []
    opts = FinalistOptions(top=2, confirm=2, confirm_rounds=2, rounds=3, max_rounds=3)
    rep = confirm_and_settle("s", recs, scripted(recs, script, calls), opts)
    assert rep is not None
    c0 = next(c for c in rep.confirmed if c.trial == 0)
    assert c0.failed_rounds == 1 and c0.processes == 2
    assert [f.trial for f in rep.finalists] == [1] and rep.winner_trial == 1


def test_without_confirmation_the_finalists_are_the_search_leaders() -> None:
    recs = [make_record(0, request_s=1.0), make_record(1, request_s=1.5, n_batch=1024)]
    script = {0: iter([1.0] * 3), 1: iter([1.5] * 3)}
    calls: list[int] = []
    opts = FinalistOptions(top=1, confirm=0, rounds=3, max_rounds=3)
    pool = candidates(recs, {r.spec_key for r in recs}, [], opts)
    rep = confirm_and_settle("s", pool, scripted(recs, script, calls), opts)
    assert rep is not None and rep.confirmed == [] and calls == [0, 0, 0]


def test_a_round_shares_fresh_workers_only_between_configs_of_one_worker_kind() -> None:
    # Seven configs: five of the installed build, one of another build, one with another model
    # setting. Each kind gets its own workers; five of one kind, at most 3 a worker: 2 and 3.
    specs = [make_record(i, n_batch=512 * (i + 1)).spec for i in range(5)]
    specs.insert(2, make_record(9, build="force-cublas").spec)
    specs.append(make_record(8, n_gpu_layers=10).spec)
    groups = workers(specs, 3)
    assert groups == [[0, 1], [3, 4, 5], [2], [6]]  # in order, as even as possible
    assert sorted(i for g in groups for i in g) == list(range(7))
    assert all(len({specs[i].model.worker_key() for i in g}) == 1 for g in groups)
    assert workers(specs, 1) == [[i] for i in [0, 1, 3, 4, 5, 2, 6]]  # a fresh worker each
    assert workers(specs[:1], 3) == [[0]] and workers([], 3) == []


def test_the_round_order_turns_so_that_no_config_always_goes_first() -> None:
    assert turned([1, 2, 3], 0) == [1, 2, 3]
    assert turned([1, 2, 3], 4) == [2, 3, 1]
    assert turned([], 2) == []
    recs = [make_record(i, request_s=1.0, n_batch=512 * (i + 1)) for i in range(3)]
    firsts: list[int] = []

    def measure(specs: list[TrialSpec]) -> list[TrialRecord]:
        numbers = [next(r.number for r in recs if r.spec_key == s.key()) for s in specs]
        firsts.append(numbers[0])
        return [make_record(n, request_s=1.0, n_batch=s.context.n_batch)
                for n, s in zip(numbers, specs)]

    got = remeasure(recs, measure, 6)
    assert firsts == [0, 1, 2, 0, 1, 2]
    assert all(len(v) == 6 for v in got.values())
