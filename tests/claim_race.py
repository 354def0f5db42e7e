"""Processes that open one empty PostgreSQL database at the same moment (tests/test_postgres_
study.py): forked from multiprocessing's fork server, which imported optuna and the storage
modules once, and released together by a barrier, so that their CREATE TABLEs collide."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

PRELOAD = ["optuna", "tuner.results.claims", "tuner.results.storeerrors", "tests.claim_race"]


def open_and_claim(url: str, i: int, barrier: Any, results: Any) -> None:
    """Open the storage, create (or load) the study and claim this process's own setting; put
    (i, True) when the claim was taken, (i, the error) when anything failed."""
    import optuna

    from tuner.results.claims import Claims
    from tuner.results.storeerrors import open_storage

    try:
        barrier.wait(timeout=60)
        storage = open_storage(url)
        optuna.create_study(study_name="race", storage=storage, load_if_exists=True)
        results.put((i, Claims(storage.engine, "race").claim(f"k{i}")[0]))
    except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
        results.put((i, f"{type(e).__name__}: {e}"))


def race(url: str, n: int) -> dict[int, object]:
    """``n`` processes open ``url`` at once; what each put, by process index."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=open_and_claim, args=(url, i, barrier, results))
             for i in range(n)]
    for p in procs:
        p.start()
    answers = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    return answers
