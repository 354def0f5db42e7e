"""The served-path decision between finalists (tuner/deploy/servedfinal.py): served figures of every
finalist stored, the winner moved only when another finalist serves faster beyond both spreads,
and the server's thread count chosen from served figures. The figures are TEST DATA built
here (the real served measurement is tested in tests/test_served.py and, end to end, by the
sweep in tests/test_end_to_end.py)."""

from __future__ import annotations

from tests.records_factory import make_record
from tuner.deploy.servedfinal import choose, thread_candidates
from tuner.errors import EnvironmentUnfit
from tuner.results.records import FinalistFigures, FinalistReport, Interval, ServedFigures, Stat


def served(request_s: list[float], threads: int | None = 16) -> ServedFigures:
    return ServedFigures(source="server", requests=len(request_s), prompt_tokens=2048,
                         gen_tokens=128, n_threads=threads, n_threads_batch=threads,
                         ttft_s=Stat.of([0.1] * len(request_s)),
                         gen_tps=Stat.of([128 / (r - 0.1) for r in request_s]),
                         request_s=Stat.of(request_s))


def report(trials: list[int], winner: int) -> FinalistReport:
    iv = Interval(value=1.0, low=0.99, high=1.01)
    figs = [FinalistFigures(trial=t, spec_key=f"k{t}", label=f"t{t}", rounds=5, samples=15,
                            request_seconds=iv, pp_tps=iv, tg_tps=iv, ratio_to_leader=iv,
                            gpu_peak_mib=1000.0, build="default", verified=True)
            for t in trials]
    return FinalistReport(study="s", finalists=figs, winner_trial=winner, leader_trial=winner,
                          tie=False, reason="raw decision", measured_at="t")


RECORDS = {0: make_record(0, n_batch=512), 1: make_record(1, n_batch=1024)}


def test_served_figures_move_the_choice_only_beyond_their_spread() -> None:
    table = {(0, None): served([0.90, 0.92, 0.91]), (1, None): served([0.80, 0.81, 0.82])}
    calls: list[tuple[int, int | None]] = []

    def serve(rec, threads):
        calls.append((rec.number, threads))
        return table.get((rec.number, threads), served([0.81, 0.815, 0.82], threads))

    out = choose(report([0, 1], winner=0), RECORDS, serve)
    assert out.winner.number == 1 and out.report.winner_trial == 1
    assert "again served in the other order" in out.report.reason
    assert "the served objective chose #1" in out.report.reason
    assert all(f.served is not None for f in out.report.finalists)
    # every finalist served, the two again in the other order (A B, then B A), then threads
    assert calls[:4] == [(0, None), (1, None), (0, None), (1, None)]
    assert {t for n, t in calls[4:]} <= set(thread_candidates(RECORDS[1]))
    assert out.served is not None and out.threads == out.served.n_threads


def test_a_served_lead_that_does_not_hold_in_the_other_order_keeps_the_raw_winner() -> None:
    """The first pass ranks #1 first beyond both spreads; served again, in the other order,
    #1 is no faster: what moved was when each server ran, not the settings."""
    passes = {0: [served([0.90, 0.92, 0.91]), served([0.80, 0.81, 0.82])],
              1: [served([0.80, 0.81, 0.82]), served([0.80, 0.81, 0.82])]}

    def serve(rec, threads):
        if threads is not None:
            return served([0.95, 0.96, 0.97], threads)
        return passes[rec.number].pop(0)

    out = choose(report([0, 1], winner=0), RECORDS, serve)
    assert out.winner.number == 0 and out.report.winner_trial == 0
    assert "not again in the other order: the raw decision stands" in out.report.reason


def test_overlapping_served_figures_keep_the_raw_winner() -> None:
    table = {0: served([0.90, 0.80, 0.85]), 1: served([0.84, 0.86, 0.88])}
    out = choose(report([0, 1], winner=0), RECORDS,
                 lambda rec, threads: table[rec.number] if threads is None
                 else served([0.95, 0.96, 0.97], threads))
    assert out.winner.number == 0 and "served objective" not in out.report.reason
    assert out.threads == 16  # the other thread counts served slower
    assert "server threads 16 served fastest" in out.report.reason


def test_a_finalist_the_server_cannot_run_is_recorded_and_skipped() -> None:
    def serve(rec, threads):
        if rec.number == 0:
            raise EnvironmentUnfit("the server exited with status 1 before answering")
        return served([0.9, 0.91, 0.92], threads)

    out = choose(report([0, 1], winner=0), RECORDS, serve)
    assert out.winner.number == 1 and "could not be served" in out.report.reason
    first = next(f for f in out.report.finalists if f.trial == 0)
    assert first.served == {"error": "the server exited with status 1 before answering"}


def test_a_cpu_trial_keeps_its_measured_threads() -> None:
    rec = make_record(0, device="cpu", n_threads=2)
    assert thread_candidates(rec) == [2]


def test_a_gpu_trial_whose_threads_the_search_chose_keeps_them() -> None:
    """A partial offload searches the CPU threads (the host computes layers): the served phase
    serves at the thread count the trial measured instead of trying others."""
    rec = make_record(0, device="cuda", n_threads=8)
    assert thread_candidates(rec) == [8]
    full = make_record(0, device="cuda")
    assert len(thread_candidates(full)) >= 1 and full.spec.context.n_threads is None
