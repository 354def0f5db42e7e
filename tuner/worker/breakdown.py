"""Where a served token's time goes, child side: in a spawned process, the config entry loaded by
llama_cpp.server's own loader, then each in-process stage of tuner/results/breakdown.py timed on
that one model and context: the raw decode loop (tuner/worker/bench.py's generation run),
``Llama.eval``, ``Llama.generate`` at the server's default sampling, the same with the
end-of-generation bias the tuner's requests carry, and streamed ``create_completion``.

Every stage generates ``gen_tokens`` at depth ``prompt_tokens`` (an untimed prefill first).
Clocks: the raw loop and ``Llama.eval`` call ``llama_synchronize`` after each token before the
clock is read; the sampled stages read the clock when a token is handed out, which follows the
sampler's read of the logits (itself a synchronisation). Sampled stages time first token to
last, as the served figures do ((last - first) / (G - 1)). Rounds are interleaved (each round
runs every stage once, after ``warmup`` discarded rounds) so that a drift of the machine is
shared by all stages. This module imports llama_cpp only inside the functions the child runs."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from tuner.results.breakdown import StageKey
from tuner.specs import Workload
from tuner.worker.protocol import BreakdownJob, BreakdownTimes, Conn, ProtocolError, ServedJob, ServedReply
from tuner.worker.served import (
    SERVER_EXCLUDE,
    build_prompts,
    eog_tokens,
    request_body,
    run_job,
    server_tokenizer,
    vocab_pieces,
)

# The sampling fields of llama_cpp.server's completion request, as Llama.generate names them.
SAMPLING_FIELDS = {"temperature": "temp", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
                   "repeat_penalty": "repeat_penalty"}
IN_PROCESS: tuple[StageKey, ...] = ("raw", "eval", "sample", "bias", "completion")


def server_sampling() -> dict[str, float]:
    """The sampling a client that sets nothing gets: the defaults of the installed server's
    ``CreateCompletionRequest``."""
    from llama_cpp.server.types import CreateCompletionRequest

    fields = CreateCompletionRequest.model_fields
    return {name: float(fields[name].default) for name in SAMPLING_FIELDS}


def breakdown_main(conn: Conn, raw_job: dict[str, Any], log_path: str) -> None:
    """Entry of the spawned process: one ``BreakdownJob``, one answer (tuner.worker.served's
    ``run_job``)."""
    run_job(conn, raw_job, log_path, _handle)


def _handle(job: ServedJob) -> ServedReply:
    if not isinstance(job, BreakdownJob):
        raise ProtocolError(f"the breakdown worker does not run {job.op!r} jobs")
    return measure(job)


def measure(job: BreakdownJob) -> BreakdownTimes:
    import llama_cpp
    from llama_cpp.server.model import LlamaProxy
    from llama_cpp.server.settings import ModelSettings

    settings = ModelSettings.model_validate(job.entry)
    llm = LlamaProxy.load_llama_from_model_settings(settings)
    sampling = server_sampling()
    tokenize = server_tokenizer(llm)
    rounds = job.warmup + job.repetitions
    # Prompts new after the forced prefix, so that no stage reuses another's KV cache.
    made = build_prompts(tokenize, job.prompt_tokens, rounds * len(IN_PROCESS), vocab_pieces(llm))
    prompts = iter(made.prompts)
    eog = eog_tokens(llama_cpp, llm)
    runs = _stages(llama_cpp, llm, job, sampling, eog)
    ms: dict[str, list[float]] = {k: [] for k in IN_PROCESS}
    errors: dict[str, str] = {}
    for r in range(rounds):
        for key in IN_PROCESS:
            prompt = next(prompts)
            if key in errors:
                continue
            try:
                value = runs[key](prompt, tokenize(prompt))
            except Exception as e:  # noqa: BLE001 - one stage failing leaves the others
                errors[key] = f"{type(e).__name__}: {e}"
                ms.pop(key, None)
                continue
            if r >= job.warmup:
                ms[key].append(value)
    return BreakdownTimes(ms={k: v for k, v in ms.items() if v}, errors=errors,
                          sampling=sampling, n_threads=settings.n_threads)


Run = Callable[[str, list[int]], float]


def _stages(llama_cpp: Any, llm: Any, job: BreakdownJob, sampling: dict[str, float],
            eog: list[int]) -> dict[str, Run]:
    """Each in-process stage as a function of (prompt text, its tokens) -> ms per token."""
    from llama_cpp.llama import LogitsProcessorList

    st = _Stages(llama_cpp, llm, job.gen_tokens, eog,
                 {SAMPLING_FIELDS[k]: (int(v) if k == "top_k" else v)
                  for k, v in sampling.items()})
    return {"raw": st.raw, "eval": st.evaluate, "sample": st.generate(None),
            "bias": st.generate(LogitsProcessorList([st.bias_processor])),
            "completion": st.completion}


class _Stages:
    """The stages' timed runs on one loaded model, ``g`` tokens each; ``gen_kwargs`` is the
    server's sampling as ``Llama.generate`` takes it."""

    def __init__(self, llama_cpp: Any, llm: Any, g: int, eog: list[int],
                 gen_kwargs: dict[str, Any]) -> None:
        self.llama_cpp, self.llm, self.g, self.eog = llama_cpp, llm, g, eog
        self.gen_kwargs = gen_kwargs
        self.ctx = llm._ctx.ctx
        self.rng = random.Random(1234)
        self.bias_map = {t: -1.0e9 for t in eog}

    def bias_processor(self, input_ids: Any, scores: Any) -> Any:
        """The end-of-generation bias as Llama.create_completion builds it from a request's
        logit_bias (llama.py 0.3.36)."""
        import numpy as np

        new_scores = np.copy(scores)
        for token, score in self.bias_map.items():
            new_scores[token] = score + scores[token]
        return new_scores

    def raw(self, _: str, tokens: list[int]) -> float:
        """The raw decode loop of tuner/worker/bench.py."""
        from tuner.worker.bench import Bench

        llm = self.llm
        bench = Bench(self.llama_cpp, llm._model.model, self.ctx)
        wl = Workload(prompt_tokens=len(tokens), gen_tokens=self.g, n_ctx=llm.n_ctx())
        seconds = bench.tg_run(wl, llm.n_batch)
        llm.reset()  # the binding's view of the cache no longer holds
        return seconds * 1e3 / self.g

    def evaluate(self, _: str, tokens: list[int]) -> float:
        """``Llama.eval`` of random next tokens, synchronised after each."""
        llm, sync = self.llm, self.llama_cpp.llama_synchronize
        llm.reset()
        llm.eval(tokens)
        sync(self.ctx)
        n_vocab = llm.n_vocab()
        nxt = [self.rng.randrange(n_vocab) for _ in range(self.g)]
        t0 = time.perf_counter_ns()
        for t in nxt:
            llm.eval([t])
            sync(self.ctx)
        return (time.perf_counter_ns() - t0) / 1e6 / self.g

    def generate(self, processors: Any) -> Run:
        """``Llama.generate`` at the server's sampling, with ``processors`` on the logits."""
        def run(_: str, tokens: list[int]) -> float:
            self.llm.reset()
            stamps = []
            it = self.llm.generate(tokens, reset=True, logits_processor=processors,
                                   **self.gen_kwargs)
            for _tok in it:
                stamps.append(time.perf_counter_ns())
                if len(stamps) == self.g:
                    break
            it.close()
            return _per_token(stamps)
        return run

    def completion(self, prompt: str, _: list[int]) -> float:
        """Streamed ``create_completion`` of the server's request body."""
        from llama_cpp.server.types import CreateCompletionRequest

        body = CreateCompletionRequest(**request_body(prompt, self.g, self.eog))
        kwargs = body.model_dump(exclude=SERVER_EXCLUDE)
        self.llm.reset()
        stamps = []
        for _chunk in self.llm(**kwargs):
            stamps.append(time.perf_counter_ns())
        if len(stamps) < 2:
            raise RuntimeError(f"the completion streamed {len(stamps)} chunks")
        return (stamps[-1] - stamps[0]) / 1e6 / (self.g - 1)


def _per_token(stamps: list[int]) -> float:
    """Milliseconds per token between the first token handed out and the last."""
    if len(stamps) < 2:
        raise RuntimeError(f"only {len(stamps)} tokens were generated")
    return (stamps[-1] - stamps[0]) / 1e6 / (len(stamps) - 1)
