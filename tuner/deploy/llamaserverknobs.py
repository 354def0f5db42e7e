"""llama-server's own settings that the served phase tunes: flags that may change how fast it
serves but not what it answers. Each one this llama-server knows (its ``--help``) is tried on
the winner beside the plain deployment, over the same HTTP workload; it is kept only when it
serves faster beyond both spreads and a greedy answer (a fixed prompt, 32 tokens, temperature
0) is the same text as the plain server's. The tries, kept or not and why, go into the
deployment's JSON and the sweep's lines."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tuner.results.records import ServedFigures
from tuner.specs import Frozen


@dataclass(frozen=True)
class Knob:
    name: str
    flags: tuple[str, ...]
    what: str  # what it changes, for the sweep's line


KNOBS: tuple[Knob, ...] = (
    # llama.cpp runs the longest prefix of the sampler chain that has GPU kernels on the GPU
    # (logit bias, penalties, top-k, top-p, min-p, temperature, the draw) instead of copying every
    # logit to the host and sampling over the whole vocabulary there: issue 30 measured the
    # sampling as the largest per-token cost beyond the decode (1.1 ms at a 152k vocabulary).
    # llama.cpp marks it experimental: the greedy check and the speed both decide.
    Knob("backend sampling", ("--backend-sampling",),
         "the sampler chain in the model's compute graph, on its device"),
)
GREEDY_TOKENS = 32


class Tried(Frozen):
    """One knob as the served phase tried it on the winner."""

    name: str
    flags: list[str]
    served: ServedFigures | None = None
    error: str | None = None  # why it could not be served
    same_greedy: bool | None = None  # its greedy answer against the plain server's
    kept: bool = False
    why: str = ""


def supported(binary: Path, env: dict[str, str]) -> list[Knob]:
    """The knobs this llama-server has a flag for, asked with the environment it will run in
    (its libraries); a server that cannot say: none."""
    try:
        proc = subprocess.run([str(binary), "--help"], capture_output=True, text=True,
                              timeout=60, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return []
    text = proc.stdout + proc.stderr
    return [k for k in KNOBS if all(f in text for f in k.flags)]


def judge(knob: Knob, served: ServedFigures, greedy: str, plain: ServedFigures,
          plain_greedy: str) -> Tried:
    """Whether ``knob`` is kept: the same greedy answer, and faster beyond the spreads."""
    same = greedy == plain_greedy
    ratio = served.request_s.median / plain.request_s.median
    # What it costs where it costs: run 30 (H200) measured backend sampling 32 ms later to the
    # first token (llama.cpp re-reserves its graph for each request's sampler) and 1.3 ms
    # sooner per token after it.
    ttft = served.ttft_s.median / plain.ttft_s.median
    faster = served.beats(plain)
    head = f"request time {ratio:.3f}x, time to first token {ttft:.3f}x the plain server's"
    if not same:
        why = "its greedy answer differs from the plain server's: not kept"
    elif faster:
        why = f"{head}, faster beyond both spreads: kept"
    else:
        why = f"{head}, not faster beyond the spreads: not kept"
    return Tried(name=knob.name, flags=list(knob.flags), served=served, same_greedy=same,
                 kept=same and faster, why=why)


def failed(knob: Knob, error: str) -> Tried:
    return Tried(name=knob.name, flags=list(knob.flags), error=error,
                 why=f"could not be served: {error}")
