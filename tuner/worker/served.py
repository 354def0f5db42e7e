"""Served-path measurement, child side: the code path ``llama_cpp.server`` runs for a streamed
completion, in a spawned process.

The model is loaded by the server's own loader (``LlamaProxy.load_llama_from_model_settings``)
from the config's model entry validated by the server's ``ModelSettings``, and each request is
the server's: a ``CreateCompletionRequest`` dumped as ``create_completion`` dumps it, passed to
``Llama.__call__`` with ``stream=True``. What differs from a real server is only HTTP.

Requests are built so that they measure the workload and nothing else: every prompt has exactly
the workload's token count (BOS included), consecutive prompts differ from their first token on
(the server's ``Llama`` reuses the KV cache of a shared prefix), and every end-of-generation
token is biased away so each request generates exactly ``gen_tokens`` (a random-weight model
may emit EOS at any point). ``request_body`` and ``build_prompts`` are shared with
``tuner verify``, which sends the same requests over HTTP.

This module imports llama_cpp only inside the functions the child runs."""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from typing import Any

from tuner.worker.protocol import (
    SERVED_JOB,
    Conn,
    Prompts,
    PromptsJob,
    ProtocolError,
    Refused,
    ServedFailed,
    ServedMeasureJob,
    ServedReply,
    ServedRun,
    ServedRuns,
    parse,
    send,
)

# Logit bias that no sampled logit overcomes (JSON has no -inf).
EOG_BIAS = -1.0e9
# Words whose first token differs between consecutive prompts; pieces of the vocabulary are
# tried after them (a tiny byte-fallback vocabulary splits most words the same way).
_HEADS = ("Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot", "Golf", "Hotel", "India",
          "Juliet", "Kilo", "Lima", "Mike", "November", "Oscar", "Papa", "Quebec", "Romeo",
          "Sierra", "Tango", "Uniform", "Victor", "Whiskey", "Xray", "Yankee", "Zulu")
_FILLERS = (" the", " and", " a", " x", " 1", ".", " ", "a")
# Keys llama_cpp.server's create_completion leaves out of the request before calling Llama.
_SERVER_EXCLUDE = {"n", "best_of", "logit_bias_type", "user", "min_tokens"}


def max_tokens_of(gen_tokens: int) -> int:
    """The ``max_tokens`` a request of the workload asks. A prompt-only workload (gen_tokens 0)
    asks 1: llama_cpp.server reads 0 as "until the context is full" (``max_tokens <= 0``), and
    with one token the first token's arrival (time to first token) is the prompt's figure."""
    return max(gen_tokens, 1)


def request_body(prompt: str, gen_tokens: int, eog: list[int]) -> dict[str, Any]:
    """The JSON body of one streamed ``/v1/completions`` request of the workload. Sampling stays
    at the server's defaults, which is what a client that sets nothing gets."""
    return {"prompt": prompt, "max_tokens": max_tokens_of(gen_tokens), "stream": True,
            "logit_bias": {str(t): EOG_BIAS for t in eog}}


def build_prompts(tokenize: Callable[[str], list[int]], n_tokens: int, count: int,
                  pieces: Callable[[int], str] | None = None) -> list[str]:
    """``count`` prompts of exactly ``n_tokens`` tokens each (as ``tokenize`` counts them, BOS
    included), each starting with a different token than the one before it."""
    prompts: list[str] = []
    previous_first: int | None = None
    candidates = _head_candidates(pieces)
    for _ in range(count):
        for head in candidates:
            head_tokens = tokenize(head)
            first = _first_content(head_tokens, tokenize)
            if first is None or first == previous_first:
                continue
            text = _fill(tokenize, head, n_tokens)
            if text is not None and _first_content(tokenize(text), tokenize) == first:
                prompts.append(text)
                previous_first = first
                break
        else:
            raise RuntimeError(f"cannot build a prompt of exactly {n_tokens} tokens that starts "
                               "with a new token")
    return prompts


def _head_candidates(pieces: Callable[[int], str] | None) -> Any:
    """Heads to try: the words, then numbered words, then (if given) vocabulary pieces."""
    yield from _HEADS
    for i in range(1, 40):
        yield from (f"{w}{i}" for w in _HEADS)
    if pieces is not None:
        for i in range(1000):
            piece = pieces(i).strip()
            if piece.isprintable() and piece:
                yield piece


def _first_content(tokens: list[int], tokenize: Callable[[str], list[int]]) -> int | None:
    """The first token after BOS (when the tokenizer adds one)."""
    bos = tokenize("")[:1]
    rest = tokens[len(bos):] if bos and tokens[:1] == bos else tokens
    return rest[0] if rest else None


def _fill(tokenize: Callable[[str], list[int]], head: str, n_tokens: int) -> str | None:
    """``head`` followed by a repeated filler so that the whole is exactly ``n_tokens``."""
    n_head = len(tokenize(head))
    if n_head == n_tokens:
        return head
    if n_head > n_tokens:
        return None
    for filler in _FILLERS:
        k, seen = n_tokens - n_head, set()
        while k > 0 and k not in seen:
            seen.add(k)
            n = len(tokenize(head + filler * k))
            if n == n_tokens:
                return head + filler * k
            k += n_tokens - n if abs(n_tokens - n) > 1 else (1 if n < n_tokens else -1)
    return None


def prefix_reuse(token_lists: list[list[int]]) -> int:
    """The longest token prefix any prompt shares with the one sent before it."""
    best = 0
    for a, b in zip(token_lists, token_lists[1:]):
        n = 0
        for x, y in zip(a, b):
            if x != y:
                break
            n += 1
        best = max(best, n)
    return best


def eog_tokens(llama_cpp: Any, llm: Any) -> list[int]:
    """Every token llama.cpp treats as end of generation (EOS, EOT, <|im_end|>, ...)."""
    vocab = llm._model.vocab
    return [t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]


def served_main(conn: Conn, raw_job: dict[str, Any], log_path: str) -> None:
    """Entry of the spawned process: one job, one answer on ``conn``, then exit. The job's
    ``env`` (the build's library, CUDA graphs, hidden GPUs: tuner.deploy.service.service_env) is set
    before llama_cpp is first imported; llama.cpp's output goes to ``log_path``."""
    from tuner.worker.main import redirect_stdio

    answer: ServedReply
    try:
        job = parse(SERVED_JOB, raw_job)
    except ProtocolError as e:
        answer = Refused(error=str(e))
    else:
        os.environ.update(job.env)
        redirect_stdio(log_path)
        try:
            answer = _prompts(job) if isinstance(job, PromptsJob) else _measure(job)
        except Exception as e:  # noqa: BLE001 - reported to the parent, which raises
            answer = ServedFailed(error=f"{type(e).__name__}: {e}",
                                  traceback=traceback.format_exc())
    try:
        send(conn, answer)
    finally:
        conn.close()


def _prompts(job: PromptsJob) -> Prompts:
    """Prompts and end-of-generation tokens from the model's vocabulary only (no weights)."""
    import llama_cpp

    llm = llama_cpp.Llama(job.model_path, vocab_only=True, verbose=False)
    tokenize = _tokenizer(llm)
    prompts = build_prompts(tokenize, job.prompt_tokens, job.count, _pieces(llm))
    tokens = [tokenize(p) for p in prompts]
    return Prompts(prompts=prompts, eog=eog_tokens(llama_cpp, llm),
                   lengths=[len(t) for t in tokens], max_prefix_reuse=prefix_reuse(tokens))


def _tokenizer(llm: Any) -> Callable[[str], list[int]]:
    # As the server tokenizes a completion prompt: BOS added, special tokens parsed.
    return lambda text: llm.tokenize(text.encode("utf-8"), special=True)


def _pieces(llm: Any) -> Callable[[int], str]:
    n = llm.n_vocab()
    return lambda i: llm.detokenize([(n // 2 + i) % n]).decode("utf-8", errors="ignore")


def _measure(job: ServedMeasureJob) -> ServedRuns:
    import llama_cpp
    from llama_cpp.server.model import LlamaProxy
    from llama_cpp.server.settings import ModelSettings
    from llama_cpp.server.types import CreateCompletionRequest

    settings = ModelSettings.model_validate(job.entry)
    t0 = time.perf_counter()
    llm = LlamaProxy.load_llama_from_model_settings(settings)
    load_seconds = time.perf_counter() - t0
    tokenize = _tokenizer(llm)
    count = job.warmup + job.requests
    prompts = build_prompts(tokenize, job.prompt_tokens, count, _pieces(llm))
    eog = eog_tokens(llama_cpp, llm)
    runs = []
    for prompt in prompts:
        body = CreateCompletionRequest(**request_body(prompt, job.gen_tokens, eog))
        kwargs = body.model_dump(exclude=_SERVER_EXCLUDE)
        runs.append(_one_request(llm, kwargs))
    return ServedRuns(runs=runs[job.warmup:], load_seconds=load_seconds,
                      max_prefix_reuse=prefix_reuse([tokenize(p) for p in prompts]),
                      n_threads=settings.n_threads, n_threads_batch=settings.n_threads_batch)


def _one_request(llm: Any, kwargs: dict[str, Any]) -> ServedRun:
    """Times of one streamed completion: first chunk and last chunk after the call."""
    t0 = time.perf_counter()
    first = last = None
    finish = None
    chunks = 0
    for chunk in llm(**kwargs):
        now = time.perf_counter()
        if first is None:
            first = now
        last = now
        chunks += 1
        finish = chunk["choices"][0].get("finish_reason") or finish
    if first is None or last is None:
        raise RuntimeError("the completion streamed nothing")
    return ServedRun(ttft_s=first - t0, request_s=last - t0, gen_s=last - first,
                     chunks=chunks, finish_reason=finish)
