"""Served-path measurement, child side: the code path ``llama_cpp.server`` runs for a streamed
completion, in a spawned process.

The model is loaded by the server's own loader (``LlamaProxy.load_llama_from_model_settings``)
from the config's model entry validated by the server's ``ModelSettings``, and each request is
the server's: a ``CreateCompletionRequest`` dumped as ``create_completion`` dumps it, passed to
``Llama.__call__`` with ``stream=True``. What differs from a real server is only HTTP.

Requests are built so that they measure the workload and nothing else: every prompt has exactly
the workload's token count (BOS included) where the vocabulary allows, else the nearest below it
(recorded); consecutive prompts differ from the first token any text can change on (the
server's ``Llama`` reuses the KV cache of a shared prefix; BOS, and a space prefix's bytes in a
byte-level vocabulary, are shared by every prompt and recorded as such), and every end-of-generation
token is biased away so each request generates exactly ``gen_tokens`` (a random-weight model
may emit EOS at any point). ``request_body`` and ``build_prompts`` are shared with
``tuner verify``, which sends the same requests over HTTP.

This module imports llama_cpp only inside the functions the child runs."""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tuner.machine import envvars
from tuner.worker.llamaparams import hold_on_host
from tuner.worker.protocol import (
    SERVED_JOB,
    Conn,
    Prompts,
    PromptsJob,
    ProtocolError,
    Refused,
    ServedFailed,
    ServedJob,
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
# A prompt may fall short of the workload by this many tokens where no filler lands exactly
# (recorded in the figures); heads tried after the first near miss, before taking the best.
NEAR = 8
_TRIES = 12
# Keys llama_cpp.server's create_completion leaves out of the request before calling Llama.
SERVER_EXCLUDE = {"n", "best_of", "logit_bias_type", "user", "min_tokens"}


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


@dataclass(frozen=True)
class PromptSet:
    """Prompts of the workload and what they are: their token counts (BOS included: exactly the
    workload's where the vocabulary allows, else the nearest it can make, never more) and the
    tokens every prompt of this tokenizer must begin with (BOS, the bytes of a space prefix a
    byte-level vocabulary cannot merge), which no choice of text avoids sharing."""

    prompts: list[str]
    lengths: list[int]
    forced_prefix: int
    asked: int  # the workload's prompt tokens

    @property
    def exact(self) -> bool:
        return all(n == self.asked for n in self.lengths)


def build_prompts(tokenize: Callable[[str], list[int]], n_tokens: int, count: int,
                  pieces: Callable[[int], str] | None = None) -> PromptSet:
    """``count`` prompts of ``n_tokens`` tokens each (as ``tokenize`` counts them, BOS
    included), no two alike in the first token any text can change (after the forced
    prefix). Exact where a head and a filler reach ``n_tokens``; else, for a
    vocabulary whose merges defeat every filler, the longest below it that was found (at least
    ``n_tokens - NEAR``): a slightly shorter prompt is a measurable workload, a longer one may
    not fit the context. Raises RuntimeError only when no text of the vocabulary comes near."""
    heads = _heads(tokenize, pieces)
    forced = _forced_prefix([toks for _, toks in heads])
    prompts: list[str] = []
    lengths: list[int] = []
    used: set[int] = set()  # first free tokens taken: no two prompts share more than forced
    for _ in range(count):
        best: tuple[str, int, int] | None = None  # text, length, its first free token
        misses = 0
        for head, toks in heads:
            if len(toks) <= forced or toks[forced] in used:
                continue
            got = _fill(tokenize, head, n_tokens, forced, toks[forced])
            if got is not None and (best is None or got[1] > best[1]):
                best = (got[0], got[1], toks[forced])
            if best is None:
                continue
            misses += 1
            if best[1] == n_tokens or misses > _TRIES:
                break
        if best is None or best[1] < n_tokens - NEAR:
            raise RuntimeError(f"cannot build a prompt of {n_tokens} tokens (or within {NEAR} "
                               f"below) that differs from the {len(prompts)} before it after "
                               f"the {forced} tokens every prompt of this vocabulary starts "
                               "with")
        prompts.append(best[0])
        lengths.append(best[1])
        used.add(best[2])
    return PromptSet(prompts, lengths, forced, n_tokens)


def _heads(tokenize: Callable[[str], list[int]],
           pieces: Callable[[int], str] | None) -> list[tuple[str, list[int]]]:
    """Heads to try, each with its tokens: the words, then numbered words, then (if given)
    vocabulary pieces; heads that tokenize alike kept once."""
    out: list[tuple[str, list[int]]] = []
    seen: set[tuple[int, ...]] = set()
    for head in _head_candidates(pieces):
        toks = tokenize(head)
        if tuple(toks) not in seen:
            seen.add(tuple(toks))
            out.append((head, toks))
    return out


def _forced_prefix(token_lists: list[list[int]]) -> int:
    """How many leading tokens every one of ``token_lists`` shares: what any prompt begins
    with (BOS; with a byte-level vocabulary, the bytes of the space prefix SentencePiece
    adds)."""
    if not token_lists:
        return 0
    n = min(len(t) for t in token_lists)
    first = token_lists[0]
    for i in range(n):
        if any(t[i] != first[i] for t in token_lists):
            return i
    return n


def _head_candidates(pieces: Callable[[int], str] | None) -> Iterator[str]:
    """Heads to try: the words, then numbered words, then (if given) vocabulary pieces."""
    yield from _HEADS
    for i in range(1, 40):
        yield from (f"{w}{i}" for w in _HEADS)
    if pieces is not None:
        for i in range(1000):
            piece = pieces(i).strip()
            if piece.isprintable() and piece:
                yield piece


def _fill(tokenize: Callable[[str], list[int]], head: str, n_tokens: int, forced: int,
          first: int) -> tuple[str, int] | None:
    """``head`` followed by a repeated filler, ``n_tokens`` long if some filler gets there, else
    the longest below it found; (text, its token count). The text's token after the forced
    prefix must still be ``first`` (a filler must not merge into the head)."""
    n_head = len(tokenize(head))
    if n_head > n_tokens:
        return None
    if n_head == n_tokens:
        return head, n_head
    best: tuple[str, int] | None = None
    for filler in _FILLERS:
        k, seen = n_tokens - n_head, set()
        while k > 0 and k not in seen:
            seen.add(k)
            text = head + filler * k
            toks = tokenize(text)
            n = len(toks)
            if n <= n_tokens and n > forced and toks[forced] == first:
                if n == n_tokens:
                    return text, n
                if best is None or n > best[1]:
                    best = (text, n)
            # The next count from the tokens a filler has added so far (several per filler in
            # a byte-level vocabulary), one at a time once close.
            per = max((n - n_head) / k, 1e-9)
            step = round((n_tokens - n) / per)
            k += step if step else (1 if n < n_tokens else -1)
    return best


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
    """Entry of the spawned process for prompts and served measurements (see ``run_job``)."""
    run_job(conn, raw_job, log_path, _handle)


def _handle(job: ServedJob) -> ServedReply:
    if isinstance(job, PromptsJob):
        return _prompts(job)
    if isinstance(job, ServedMeasureJob):
        return _measure(job)
    raise ProtocolError(f"the served-path worker does not run {job.op!r} jobs")


def run_job(conn: Conn, raw_job: dict[str, Any], log_path: str,
            handle: Callable[[ServedJob], ServedReply]) -> None:
    """One job, one answer on ``conn``, then exit. The job's ``env`` (the build's library, CUDA
    graphs, hidden GPUs: tuner.deploy.service.service_env) is set before llama_cpp is first
    imported; llama.cpp's output goes to ``log_path``."""
    from tuner.worker.main import redirect_stdio

    answer: ServedReply
    try:
        job = parse(SERVED_JOB, raw_job)
    except ProtocolError as e:
        answer = Refused(error=str(e))
    else:
        # The job's environment is the whole of what the service would get: a library folder
        # the caller's environment names (a stale build) must not reach the import.
        for name in ("LLAMA_CPP_LIB_PATH", envvars.VARS["n_cpu_moe"].name,
                     envvars.VARS["ffn_on_host"].name):
            if name not in job.env:
                os.environ.pop(name, None)
        os.environ.pop("GGML_SCHED_DEBUG", None)
        os.environ.update(job.env)
        redirect_stdio(log_path)
        try:
            # What the service's launcher applies from the same environment
            env = envvars.current()
            hold_on_host(env.n_cpu_moe, env.ffn_on_host)
            answer = handle(job)
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
    tokenize = server_tokenizer(llm)
    made = build_prompts(tokenize, job.prompt_tokens, job.count, vocab_pieces(llm))
    tokens = [tokenize(p) for p in made.prompts]
    return Prompts(prompts=made.prompts, eog=eog_tokens(llama_cpp, llm),
                   lengths=[len(t) for t in tokens], max_prefix_reuse=prefix_reuse(tokens),
                   forced_prefix=made.forced_prefix)


def server_tokenizer(llm: Any) -> Callable[[str], list[int]]:
    # As the server tokenizes a completion prompt: BOS added, special tokens parsed.
    return lambda text: llm.tokenize(text.encode("utf-8"), special=True)


def vocab_pieces(llm: Any) -> Callable[[int], str]:
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
    tokenize = server_tokenizer(llm)
    count = job.warmup + job.requests
    made = build_prompts(tokenize, job.prompt_tokens, count, vocab_pieces(llm))
    eog = eog_tokens(llama_cpp, llm)
    runs = []
    for prompt in made.prompts:
        body = CreateCompletionRequest(**request_body(prompt, job.gen_tokens, eog))
        kwargs = body.model_dump(exclude=SERVER_EXCLUDE)
        runs.append(_one_request(llm, kwargs))
    return ServedRuns(runs=runs[job.warmup:], load_seconds=load_seconds,
                      max_prefix_reuse=prefix_reuse([tokenize(p) for p in made.prompts]),
                      n_threads=settings.n_threads, n_threads_batch=settings.n_threads_batch,
                      lengths=made.lengths[job.warmup:], forced_prefix=made.forced_prefix)


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
