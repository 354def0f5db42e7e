"""Take llama.cpp's report of where every graph operation runs, outside every timed region.

ggml reads ``GGML_SCHED_DEBUG`` in ``ggml_backend_sched_new``, that is once per scheduler, and
llama.cpp makes one scheduler per context: so the variable is set only while a separate *proof
context* is created, and removed before the trial's timed context exists (which therefore
prints nothing and pays nothing for the report). The proof context reserves its graphs (a
report each, at 1 token and at n_ubatch tokens), decodes a short prompt and one generated token
(a report each), and is freed. The report goes through the log callback (``GGML_LOG_DEBUG``),
so it is taken from the worker's log capture between marks and then dropped from memory (the
worker's log file keeps it).

Settings that can move an operation to another backend are the ones that change the graph or
a kernel's availability: flash attention, the K/V cache types, the ubatch size (the graph's
token count and the scheduler's offload decisions depend on it) and the context size (the KV
length attention runs over). One report is taken per worker for each combination of these;
n_batch and the thread count do not change where an operation runs.
"""

from __future__ import annotations

import os
from typing import Any

from tuner.evidence.opplacement import REPORT_ENV, report_lines
from tuner.settings import of_level
from tuner.specs import ContextSettings
from tuner.worker.logcapture import LogCapture

PROOF_PROMPT_TOKENS = 32  # at most one ubatch: the report of a real prompt decode
ProofKey = tuple[Any, ...]


def proof_key(cs: ContextSettings, n_ctx: int) -> ProofKey:
    """The settings that decide where operations run (see the module docstring): every
    context setting declared ``changes_ops`` in tuner/settings.py, and the context size."""
    return (*(getattr(cs, f) for s in of_level("context") if s.changes_ops for f in s.names),
            n_ctx)


class OpProof:
    """The reports one worker has taken, by ``proof_key``. A worker holds one model, so the key
    needs no model; a report that failed is kept too (with its error), not retried per trial."""

    def __init__(self) -> None:
        self._taken: dict[ProofKey, tuple[str | None, str | None]] = {}

    def take(self, lc: Any, model: Any, cs: ContextSettings, n_ctx: int, threads: int,
             log: LogCapture) -> tuple[str | None, str | None]:
        """(report text, error): the scheduler's report lines for these settings, taken now
        or earlier in this worker; error says why there is none (or why it may be partial)."""
        key = proof_key(cs, n_ctx)
        if key not in self._taken:
            self._taken[key] = take_report(lc, model, cs, n_ctx, threads, log)
        return self._taken[key]


def take_report(lc: Any, model: Any, cs: ContextSettings, n_ctx: int, threads: int,
                log: LogCapture) -> tuple[str | None, str | None]:
    """Create a proof context with the report switched on, decode a few tokens, free it, and
    return the report lines captured meanwhile. Never raises for llama.cpp's refusals."""
    from tuner.worker.bench import Bench, context_params  # noqa: PLC0415 - imports llama_cpp

    log.mark()
    error: str | None = None
    ctx = None
    try:
        with _env(REPORT_ENV, "2"):
            ctx = lc.llama_init_from_model(model, context_params(lc, cs, n_ctx, threads))
        if not ctx:
            error = "llama.cpp could not create the proof context"
        else:
            bench = Bench(lc, model, ctx)
            n_prompt = max(1, min(PROOF_PROMPT_TOKENS, cs.n_ubatch, n_ctx - 1))
            bench.prompt(n_prompt, cs.n_batch)
            bench.generate(1, None)
    except Exception as e:  # the report taken so far still counts; the trial goes on
        error = f"proof decode failed: {type(e).__name__}: {e}"
    finally:
        if ctx:
            lc.llama_free(ctx)
    text = report_lines(log.cut_since_mark())
    return (text or None), error


class _env:
    """Set an environment variable for a block and put back what was there (or nothing)."""

    def __init__(self, name: str, value: str) -> None:
        self.name, self.value = name, value
        self.saved: str | None = None

    def __enter__(self) -> None:
        self.saved = os.environ.get(self.name)
        os.environ[self.name] = self.value

    def __exit__(self, *exc: object) -> None:
        if self.saved is None:
            os.environ.pop(self.name, None)
        else:
            os.environ[self.name] = self.saved


# One per worker process (a worker is its own spawned process and serves one model).
OP_PROOF = OpProof()
