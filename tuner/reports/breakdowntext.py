"""The winner's per-token breakdown as the md and json reports hold it (the terminal and HTML
views draw their own)."""

from __future__ import annotations

from typing import Any

from tuner.results.breakdown import ADDS, STAGES, TokenBreakdown


def breakdown_json(bd: TokenBreakdown) -> dict[str, Any]:
    """The per-token breakdown as the JSON report holds it on the winner's row: each measured
    stage's ms per token, what it adds and its share; the stages not measured with why."""
    return {
        "prompt_tokens": bd.prompt_tokens, "gen_tokens": bd.gen_tokens,
        "repetitions": bd.repetitions, "sampling": bd.sampling, "threads": bd.threads,
        "gpu_share": bd.gpu_share(),
        "stages": [sh.model_dump(mode="json") for sh in bd.shares()],
        "not_measured": {s.key: s.error for s in bd.stages if s.ms_per_token is None},
    }


def breakdown_md(study: str, bd: TokenBreakdown) -> str:
    """A markdown section: where each millisecond of the winner's served token goes."""
    out = [f"## Where each millisecond per token goes: {study}, #{bd.trial} {bd.label}", "",
           f"Depth {bd.prompt_tokens}, {bd.gen_tokens} tokens, {bd.repetitions} repetitions "
           f"each; server sampling {', '.join(f'{k} {v:g}' for k, v in bd.sampling.items())}.",
           "", "| stage | ms/token | range | adds ms | share | what it adds |",
           "|---|---:|---:|---:|---:|---|"]
    for sh in bd.shares():
        st = bd.stage(sh.key)
        rng = (f"{st.ms_per_token.min:.3f}-{st.ms_per_token.max:.3f}"
               if st and st.ms_per_token else "")
        share = f"{sh.share:.0%}" if sh.share is not None else ""
        out.append(f"| {sh.label} | {sh.ms_per_token:.3f} | {rng} | {sh.added_ms:+.3f} | "
                   f"{share} | {ADDS[sh.key]} |")
    out += [f"| {STAGES[s.key]} | | | | | not measured: {s.error} |" for s in bd.stages
            if s.ms_per_token is None]
    return "\n".join(out) + "\n"
