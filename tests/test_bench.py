"""The measurement loop (tuner/worker/bench.py) on its own: the order of llama.cpp calls and
clock reads, the warm-up and steady-state rule, and pruning between repetitions.

The llama.cpp calls here go to a FAKE llama_cpp that records them, and the clock is a FAKE
clock that returns scripted durations: what is tested is the loop's own logic, which the real
library cannot make deterministic. The same loop runs on the real library in
tests/test_runner.py and, end to end, in every sweep test."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator

import pytest

from tuner.specs import Workload
from tuner.worker import bench as bench_mod
from tuner.worker.bench import Bench


class FakeLlama:
    """FAKE llama_cpp: the handful of calls Bench makes, each appended to ``events``."""

    llama_token = ctypes.c_int32

    def __init__(self, events: list[tuple]) -> None:
        self.events = events

    def llama_model_get_vocab(self, model: object) -> str:
        return "vocab"

    def llama_vocab_n_tokens(self, vocab: object) -> int:
        return 100

    def llama_vocab_get_add_bos(self, vocab: object) -> bool:
        return True

    def llama_vocab_bos(self, vocab: object) -> int:
        return 1

    def llama_get_memory(self, ctx: object) -> str:
        return "memory"

    def llama_batch_get_one(self, arr: object, n: int) -> tuple[str, int]:
        return ("batch", n)

    def llama_decode(self, ctx: object, batch: tuple[str, int]) -> int:
        self.events.append(("decode", batch[1]))
        return 0

    def llama_synchronize(self, ctx: object) -> None:
        self.events.append(("sync",))

    def llama_memory_clear(self, mem: object, data: bool) -> None:
        self.events.append(("clear",))


class FakeClock:
    """FAKE clock: each timed run lasts the next scripted number of seconds."""

    def __init__(self, events: list[tuple], durations: Iterator[float]) -> None:
        self.events, self.durations, self.now, self.started = events, durations, 0, False

    def __call__(self) -> int:
        self.events.append(("clock",))
        if self.started:
            self.now += int(next(self.durations) * 1e9)
        self.started = not self.started
        return self.now


WL = Workload(prompt_tokens=8, gen_tokens=2, n_ctx=16, repetitions=3, warmup=1)


def run(durations: list[float], prune_against: list[float] | None = None,
        monkeypatch: pytest.MonkeyPatch | None = None):
    events: list[tuple] = []
    assert monkeypatch is not None
    monkeypatch.setattr(bench_mod.time, "perf_counter_ns", FakeClock(events, iter(durations)))
    b = Bench(FakeLlama(events), model=object(), ctx=object())
    return b.timed(WL, n_batch=4, prune_against=prune_against), events


def test_every_clock_read_follows_a_synchronize(monkeypatch: pytest.MonkeyPatch) -> None:
    (pp, tg, warmups, pruned), events = run([1.0] * 8, monkeypatch=monkeypatch)
    assert (len(pp), len(tg), pruned) == (3, 3, None)
    reads = [i for i, e in enumerate(events) if e == ("clock",)]
    assert len(reads) == 2 * (len(pp) + len(tg) + 2)  # warm-ups are timed runs too
    assert all(events[i - 1] == ("sync",) for i in reads), events
    # A prompt run: cache cleared, then the prompt in n_batch chunks, then one synchronize.
    first = reads[0]
    assert events[first - 2:first] == [("clear",), ("sync",)]
    assert events[first + 1:first + 4] == [("decode", 4), ("decode", 4), ("sync",)]


def test_a_slow_first_repetition_counts_as_one_more_warm_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # pp: warm-up, then 2.0 (slow), 1.0, 1.0 -> the slow one dropped, one more run; tg steady.
    (pp, tg, warmups, _), _ = run([5.0, 2.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5],
                                  monkeypatch=monkeypatch)
    assert pp == [1.0, 1.0, 1.0] and tg == [0.5, 0.5, 0.5]
    assert warmups == {"pp": 2, "tg": 1}


def test_a_clearly_slower_trial_stops_between_repetitions(monkeypatch: pytest.MonkeyPatch) -> None:
    # The best trial's requests took 1.0 s; this one's prompts alone take 3 s: pruned after the
    # minimum of kept repetitions, with no generation phase measured.
    (pp, tg, _, pruned), _ = run([3.0] * 8, prune_against=[1.0, 1.0, 1.0],
                                 monkeypatch=monkeypatch)
    assert pruned is not None and len(pp) == 2 and tg == []


def test_a_trial_as_fast_as_the_best_is_measured_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    (pp, tg, _, pruned), _ = run([0.5] * 8, prune_against=[1.0, 1.0, 1.0],
                                 monkeypatch=monkeypatch)
    assert pruned is None and len(pp) == 3 and len(tg) == 3
