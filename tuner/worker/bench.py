"""Measurement the way llama-bench does it, through llama-cpp-python's low-level API.

A repetition is one request of the workload: clear the KV cache, decode P prompt tokens in
n_batch chunks, synchronize, read the clock; then G tokens one decode each (synchronizing after
every decode) at depth P, synchronize, read the clock. Warm-up repetitions are run and
discarded. Every clock read follows ``llama_synchronize``: without it, asynchronous GPU work
makes prompt timings come out several times too fast."""

from __future__ import annotations

import random
import time
from typing import Any

from tuner.specs import KV_TYPES, ContextSettings, Workload


class Infeasible(Exception):
    """llama.cpp refused the settings (context creation failed, no KV slot for a batch)."""


def context_params(llama_cpp: Any, cs: ContextSettings, n_ctx: int, threads: int) -> Any:
    p = llama_cpp.llama_context_default_params()
    p.n_ctx = n_ctx
    p.n_batch = cs.n_batch
    p.n_ubatch = cs.n_ubatch
    p.n_seq_max = 1
    p.type_k = KV_TYPES[cs.type_k]
    p.type_v = KV_TYPES[cs.type_v]
    p.flash_attn_type = (
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if cs.flash_attn
        else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    p.n_threads = cs.n_threads or threads
    p.n_threads_batch = cs.n_threads or threads
    p.offload_kqv = True
    p.no_perf = True
    return p


class Bench:
    """Runs the workload's repetitions on one context."""

    def __init__(self, llama_cpp: Any, model: Any, ctx: Any, seed: int = 1234) -> None:
        self.lc = llama_cpp
        self.ctx = ctx
        vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self.bos = llama_cpp.llama_vocab_bos(vocab) if llama_cpp.llama_vocab_get_add_bos(vocab) else None
        self.rng = random.Random(seed)
        self.mem = llama_cpp.llama_get_memory(ctx)

    def _token(self) -> int:
        return self.rng.randrange(self.n_vocab)

    def _decode(self, tokens: list[int]) -> None:
        arr = (self.lc.llama_token * len(tokens))(*tokens)
        rc = self.lc.llama_decode(self.ctx, self.lc.llama_batch_get_one(arr, len(tokens)))
        if rc == 1:
            raise Infeasible("llama_decode found no KV cache slot for the batch")
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def prompt(self, n_prompt: int, n_batch: int) -> None:
        done = 0
        while done < n_prompt:
            n = min(n_batch, n_prompt - done)
            tokens = [self._token() for _ in range(n)]
            if done == 0 and self.bos is not None:
                tokens[0] = self.bos
            self._decode(tokens)
            done += n
        self.lc.llama_synchronize(self.ctx)

    def generate(self, n_gen: int, first: int | None) -> None:
        token = first if first is not None else self._token()
        for _ in range(n_gen):
            self._decode([token])
            self.lc.llama_synchronize(self.ctx)
            token = self._token()

    def repetition(self, wl: Workload, n_batch: int) -> tuple[float, float]:
        """One request: (prompt seconds, generation seconds)."""
        self.lc.llama_memory_clear(self.mem, False)
        self.lc.llama_synchronize(self.ctx)
        t0 = time.perf_counter_ns()
        if wl.prompt_tokens:
            self.prompt(wl.prompt_tokens, n_batch)
        t1 = time.perf_counter_ns()
        if wl.gen_tokens:
            self.generate(wl.gen_tokens, self.bos if wl.prompt_tokens == 0 else None)
        t2 = time.perf_counter_ns()
        return (t1 - t0) / 1e9, (t2 - t1) / 1e9

    def warmup(self, wl: Workload, n_batch: int) -> None:
        """Discarded repetitions: the first request on a context allocates and, with CUDA
        graphs, captures (llama.cpp captures a graph once it has run twice unchanged)."""
        for _ in range(wl.warmup):
            self.repetition(wl, n_batch)

    def timed(self, wl: Workload, n_batch: int) -> dict[str, list[float]]:
        pp, tg = [], []
        for _ in range(wl.repetitions):
            a, b = self.repetition(wl, n_batch)
            pp.append(a)
            tg.append(b)
        return {"pp_seconds": pp, "tg_seconds": tg}

    def run(self, wl: Workload, n_batch: int) -> dict[str, list[float]]:
        self.warmup(wl, n_batch)
        return self.timed(wl, n_batch)
