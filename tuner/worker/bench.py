"""Measurement the way llama-bench does it, through llama-cpp-python's low-level API: the
prompt phase (pp<P>) and the generation phase at depth P (tg<G> -d P), each with its warm-up and
repetitions. Every clock read follows ``llama_synchronize`` (without it, asynchronous GPU work
makes prompt timings come out several times too fast), and every token is drawn before the
clock starts. An earlier version timed prompt and generation alternately in one loop: on an H100
its prompt figures for multi-ubatch settings read up to 15% below llama-bench's."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from tuner.settings import apply_context
from tuner.specs import ContextSettings, Workload
from tuner.worker.prunerule import verdict


class Infeasible(Exception):
    """llama.cpp refused the settings (context creation failed, no KV slot for a batch)."""


def context_params(llama_cpp: Any, cs: ContextSettings, n_ctx: int, threads: int) -> Any:
    """llama.cpp's context params for ``cs``: every context setting applied as declared in
    ``tuner.settings``; the workload's context size, one sequence, the thread count (the
    trial's, else the worker's), KQV on the model's device."""
    p = llama_cpp.llama_context_default_params()
    p.n_ctx = n_ctx
    p.n_seq_max = 1
    apply_context(llama_cpp, p, cs)
    p.n_threads = cs.n_threads or threads
    p.n_threads_batch = cs.n_threads or threads
    p.offload_kqv = True
    p.no_perf = True
    return p


class Bench:
    """Runs the workload's two phases on one context, the way llama-bench runs pp<P> and
    tg<G> at depth P: first the prompt repetitions back to back (clear, decode P tokens), then
    the generation repetitions (clear, prefill P tokens untimed, then G timed single-token
    decodes). A request's time is prompt + generation of the same repetition index.

    Warm-up: ``wl.warmup`` discarded runs per phase, then a steady-state check: while the
    first kept repetition is more than STEADY slower than the median of the others, it is
    dropped as one more warm-up and another repetition runs (at most EXTRA_WARMUP times). On an
    H100, n_batch 2048 / n_ubatch 1024 prompts ran 20-25% slow in the repetition after the
    first warm-up (docs/benchmarks.md); most settings are steady after one."""

    STEADY = 0.03
    EXTRA_WARMUP = 3

    def __init__(self, llama_cpp: Any, model: Any, ctx: Any, seed: int = 1234) -> None:
        self.lc = llama_cpp
        self.ctx = ctx
        vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self.bos = llama_cpp.llama_vocab_bos(vocab) if llama_cpp.llama_vocab_get_add_bos(vocab) else None
        self.rng = random.Random(seed)
        self.mem = llama_cpp.llama_get_memory(ctx)
        self.warmups = {"pp": 0, "tg": 0}

    def _tokens(self, n: int) -> Any:
        arr = (self.lc.llama_token * n)()
        for i in range(n):
            arr[i] = self.rng.randrange(self.n_vocab)
        return arr

    def _decode(self, arr: Any, n: int) -> None:
        rc = self.lc.llama_decode(self.ctx, self.lc.llama_batch_get_one(arr, n))
        if rc == 1:
            raise Infeasible("llama_decode found no KV cache slot for the batch")
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _prompt_chunks(self, n_prompt: int, n_batch: int) -> list[tuple[Any, int]]:
        """Random prompt tokens in n_batch chunks, made before any clock is read."""
        chunks = []
        done = 0
        while done < n_prompt:
            n = min(n_batch, n_prompt - done)
            arr = self._tokens(n)
            if done == 0 and self.bos is not None:
                arr[0] = self.bos
            chunks.append((arr, n))
            done += n
        return chunks

    def _run_prompt(self, chunks: list[tuple[Any, int]]) -> None:
        for arr, n in chunks:
            self._decode(arr, n)
        self.lc.llama_synchronize(self.ctx)

    def prompt(self, n_prompt: int, n_batch: int) -> None:
        """Decode a prompt, untimed (the op proof's decode)."""
        self._run_prompt(self._prompt_chunks(n_prompt, n_batch))

    def generate(self, n_gen: int, first: int | None) -> None:
        """Decode ``n_gen`` single tokens at the current depth, untimed."""
        for i in range(n_gen):
            arr = self._tokens(1)
            if i == 0 and first is not None:
                arr[0] = first
            self._decode(arr, 1)
            self.lc.llama_synchronize(self.ctx)

    def _clear(self) -> None:
        self.lc.llama_memory_clear(self.mem, False)
        self.lc.llama_synchronize(self.ctx)

    def pp_run(self, wl: Workload, n_batch: int) -> float:
        """One timed prompt of P tokens on an empty cache (llama-bench's pp<P>)."""
        chunks = self._prompt_chunks(wl.prompt_tokens, n_batch)
        self._clear()
        t0 = time.perf_counter_ns()
        self._run_prompt(chunks)
        return (time.perf_counter_ns() - t0) / 1e9

    def tg_run(self, wl: Workload, n_batch: int) -> float:
        """G timed single-token decodes at depth P (llama-bench's tg<G> -d P); the prefill to
        depth P is computed, as a server computes it, but not timed."""
        chunks = self._prompt_chunks(wl.prompt_tokens, n_batch) if wl.prompt_tokens else []
        tokens = [self._tokens(1) for _ in range(wl.gen_tokens)]
        if not chunks and self.bos is not None:
            tokens[0][0] = self.bos
        self._clear()
        if chunks:
            self._run_prompt(chunks)
        t0 = time.perf_counter_ns()
        for arr in tokens:
            self._decode(arr, 1)
            self.lc.llama_synchronize(self.ctx)
        return (time.perf_counter_ns() - t0) / 1e9

    def _phase(self, run: Any, wl: Workload, n_batch: int, key: str,
               gate: Callable[[list[float]], str | None] | None = None,
               ) -> tuple[list[float], str | None]:
        """Warm-up, repetitions, steady-state check; ``gate`` (pruning) is asked after every
        kept repetition, outside the clock, and stops the phase when it gives a reason."""
        for _ in range(wl.warmup):
            run(wl, n_batch)
        self.warmups[key] = wl.warmup
        kept: list[float] = []
        for _ in range(wl.repetitions):
            kept.append(run(wl, n_batch))
            if gate is not None and (why := gate(kept)):
                return kept, why
        extra = 0
        while (len(kept) > 1 and extra < self.EXTRA_WARMUP
               and kept[0] > (1 + self.STEADY) * statistics.median(kept[1:])):
            kept = kept[1:] + [run(wl, n_batch)]
            extra += 1
            self.warmups[key] = wl.warmup + extra
            if gate is not None and (why := gate(kept)):
                return kept, why
        return kept, None

    def timed(self, wl: Workload, n_batch: int, prune_against: list[float] | None = None,
              ) -> tuple[list[float], list[float], dict[str, int], str | None]:
        """Prompt seconds and generation seconds per repetition (zeros for an empty phase), the
        warm-up runs of each phase, and why the trial was pruned (None: measured in full).

        Pruning (``prune_against``: the best usable trial's per-repetition request seconds;
        tuner/search/pruning.py) keeps the two phases as they are, so that pp<P> and tg<G> -d P are
        measured as llama-bench measures them (alternating prompt and generation read prompt
        speeds up to 15% low on an H100, see the module docstring), and asks the rule after
        every kept repetition: in the prompt phase on the prompt seconds (a lower bound of each
        request), in the generation phase on prompt + generation of the repetitions done. A
        pruned trial returns what it measured: fewer prompt repetitions and no generation
        ones, or every prompt repetition and fewer generation ones."""
        def gate(seconds: list[float]) -> str | None:
            return verdict(seconds, prune_against)

        zeros = [0.0] * wl.repetitions
        pp, why = (self._phase(self.pp_run, wl, n_batch, "pp", gate) if wl.prompt_tokens
                   else (zeros, None))
        if why is not None:
            return pp, [], dict(self.warmups), why
        tg, why = (self._phase(self.tg_run, wl, n_batch, "tg",
                               lambda kept: gate([a + b for a, b in zip(pp, kept)]))
                   if wl.gen_tokens else (zeros, None))
        return pp, tg, dict(self.warmups), why
