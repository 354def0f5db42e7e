"""Where each millisecond of a served token goes: one config's generation time per token
measured stage by stage, each stage the previous one plus one layer of the served path, in one
session (tuner/worker/breakdown.py measures, tuner/deploy/breakdown.py runs it).

Stages, in order (each cumulative: its whole time per generated token at the workload's depth):

- ``raw``: the sweep's decode loop (``llama_decode`` of one token, ``llama_synchronize``), what
  the sweep ranks on and llama-bench compares with;
- ``eval``: llama-cpp-python's ``Llama.eval`` of one token (batch set-up in Python, ctypes);
- ``sample``: ``Llama.generate`` with llama_cpp.server's default sampling (read from the
  installed server's request model), the sampler chain over the whole vocabulary;
- ``bias``: the same with the end-of-generation logit bias every tuner request carries (so
  that each generates exactly the workload's tokens): a Python logits processor copying the
  logits every token, which a client that sends no bias does not pay;
- ``completion``: streamed ``create_completion`` with that bias, as the server calls it
  (detokenising, stop checks, chunk dicts);
- ``http``: llama_cpp.server over HTTP, streamed (event loop, thread hand-offs, SSE, client).

A stage that could not be measured keeps its reason. Stages are measured separately, so a
later one can come out a little below an earlier one: the difference is then shown as it was
measured (negative), not hidden."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tuner.results.stat import Stat
from tuner.specs import Frozen

StageKey = Literal["raw", "eval", "sample", "bias", "completion", "http"]
STAGES: dict[StageKey, str] = {
    "raw": "raw decode loop",
    "eval": "Llama.eval",
    "sample": "server sampling",
    "bias": "EOG logit bias",
    "completion": "streamed create_completion",
    "http": "llama_cpp.server over HTTP",
}
# What each stage adds to the one before it, for reports.
ADDS: dict[StageKey, str] = {
    "raw": "the GPU (or CPU) decode of one token",
    "eval": "the binding's per-token Python and ctypes",
    "sample": "sampling over the vocabulary at the server's defaults",
    "bias": "the tuner's end-of-generation bias (a Python copy of the logits)",
    "completion": "detokenising, stop checks, chunks",
    "http": "the HTTP server, event loop and streaming",
}


class Stage(Frozen):
    """One stage: its whole time per generated token (ms), each sample one repetition."""

    key: StageKey
    ms_per_token: Stat | None = None
    error: str | None = None  # why it was not measured


class StageShare(Frozen):
    """A stage as a report shows it: what it adds to the stage before and its share of the
    served token's time."""

    key: StageKey
    label: str
    ms_per_token: float
    added_ms: float
    share: float | None  # added_ms / the last measured stage's ms (None: nothing to divide by)


class TokenBreakdown(Frozen):
    trial: int  # the search trial whose settings these are
    spec_key: str
    label: str
    prompt_tokens: int  # the depth generation ran at (the workload's prompt)
    gen_tokens: int
    warmup: int  # discarded runs of every stage
    repetitions: int  # kept runs of every stage, interleaved (round r runs every stage once)
    sampling: dict[str, float] = Field(default_factory=dict)  # the server's defaults used
    threads: int | None = None
    stages: list[Stage]
    measured_at: str

    def stage(self, key: StageKey) -> Stage | None:
        return next((s for s in self.stages if s.key == key), None)

    def shares(self) -> list[StageShare]:
        """The measured stages in order, each with what it adds to the previous measured one
        and that addition's share of the last measured stage (the served token's time)."""
        measured = [s for s in self.stages if s.ms_per_token is not None]
        if not measured:
            return []
        total = measured[-1].ms_per_token.median if measured[-1].ms_per_token else 0.0
        out, before = [], 0.0
        for s in measured:
            ms = s.ms_per_token.median if s.ms_per_token else 0.0
            out.append(StageShare(key=s.key, label=STAGES[s.key], ms_per_token=ms,
                                  added_ms=ms - before,
                                  share=(ms - before) / total if total > 0 else None))
            before = ms
        return out

    def gpu_share(self) -> float | None:
        """The raw decode's share of the served token's time."""
        shares = self.shares()
        return shares[0].share if shares and shares[0].key == "raw" else None

    def lines(self) -> list[str]:
        """One line per stage: "raw decode loop  3.650 ms/token (3.61-3.70)  +3.650  63%"."""
        out = []
        for sh in self.shares():
            st = self.stage(sh.key)
            spread = (f" ({st.ms_per_token.min:.3f}-{st.ms_per_token.max:.3f})"
                      if st and st.ms_per_token else "")
            share = f"{sh.share:4.0%}" if sh.share is not None else "  n/a"
            out.append(f"{sh.label:<28} {sh.ms_per_token:8.3f} ms/token{spread}  "
                       f"{sh.added_ms:+8.3f}  {share}")
        out += [f"{STAGES[s.key]:<28} not measured: {s.error}" for s in self.stages
                if s.ms_per_token is None and s.error]
        return out
