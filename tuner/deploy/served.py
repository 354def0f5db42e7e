"""Served-path figures, parent side: measure one config through the code path llama_cpp.server
runs (``tuner.worker.served``, in a fresh spawned process), and turn timed requests into
``ServedFigures`` (shared with ``tuner verify``, which times the same requests over HTTP).

The raw figures of a trial (``Measurement``) come from a decode loop like llama-bench's; a
service also samples, detokenises, checks stops and streams in Python for every token, and on a
fast GPU that costs a quarter of the generation speed. Both are kept, named for what they are.
This process never imports llama_cpp."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from tuner.errors import TunerError
from tuner.evidence.placement import expect, parse_load_log, verify
from tuner.machine.children import orphan_safe_args, run_orphan_safe
from tuner.machine.tempdirs import temp_dir
from tuner.results.records import ServedFigures, Stat, widest_spread
from tuner.specs import TrialSpec
from tuner.worker.logcapture import last_words
from tuner.worker.protocol import (
    SERVED_REPLY,
    BreakdownJob,
    Prompts,
    PromptsJob,
    ProtocolError,
    Refused,
    ServedFailed,
    ServedMeasureJob,
    ServedReply,
    expect_reply,
    receive,
)
from tuner.worker.runner import SPAWN
from tuner.worker.served import max_tokens_of, served_main
from tuner.worker.trialrecord import UNSTABLE_SPREAD


def run_child(job: PromptsJob | ServedMeasureJob | BreakdownJob, timeout_s: float,
              target: Callable[[Any, dict[str, Any], str], None] = served_main,
              ) -> tuple[ServedReply, str]:
    """Run one served-path job in a fresh spawned process (``target``: its entry,
    tuner.worker.served's by default); (its answer, its stderr/stdout log). Raises TunerError
    when the process dies, overruns, or reports an error, and ProtocolError when its answer is
    not a served-path reply."""
    with temp_dir("tuner-served-") as tmp:
        log_path = str(Path(tmp) / "served.log")
        conn, child = SPAWN.Pipe()
        proc = SPAWN.Process(target=run_orphan_safe,  # ends with the command, even a SIGKILLed one
                             args=orphan_safe_args(target, child,
                                                   job.model_dump(mode="json"), log_path),
                             daemon=True, name="tuner-served")
        proc.start()
        child.close()
        try:
            if not conn.poll(timeout_s):
                raise TunerError(f"served-path {job.op} ran over {timeout_s:.0f} s; killed")
            answer = receive(conn, SERVED_REPLY)
        except (EOFError, OSError):
            proc.join(5)
            tail = " | ".join(last_words(log_path, 4))  # the abort's cause, not its backtrace
            raise TunerError(f"served-path process exited with {proc.exitcode} during "
                             f"{job.op}: {tail}") from None
        finally:
            if proc.is_alive():
                proc.kill()
            proc.join(5)
            conn.close()
        log = Path(log_path).read_text(errors="replace") if Path(log_path).exists() else ""
    if isinstance(answer, Refused):
        raise ProtocolError(f"the served-path worker refused its job: {answer.error}")
    if isinstance(answer, ServedFailed):
        raise TunerError(f"served-path {job.op} failed: {answer.error}")
    return answer, log


def prompts_for(model_path: str, prompt_tokens: int, count: int, env: dict[str, str],
                timeout_s: float = 300) -> Prompts:
    """Prompts of ``prompt_tokens`` tokens (the nearest below where the vocabulary cannot make
    it exactly), each new after the tokens every prompt shares, and the model's
    end-of-generation tokens, from its vocabulary in a spawned process."""
    answer, _ = run_child(PromptsJob(model_path=model_path, env=env,
                                     prompt_tokens=prompt_tokens, count=count), timeout_s)
    return expect_reply(answer, Prompts, "a prompts job")


def check_placement(log: str, spec: TrialSpec) -> None:
    """The served load must be placed as the trial was; a served figure of another placement
    would be compared with the wrong thing."""
    verdict = verify(parse_load_log(log), expect(spec))
    if not verdict.verified:
        raise TunerError("the served-path load is not placed as the trial was: "
                         + "; ".join(verdict.reasons))


def figures(runs: list[dict[str, Any]], *, source: Literal["worker", "server", "llama-server"],
            prompt_tokens: int, gen_tokens: int, warmup: int, max_prefix_reuse: int,
            n_threads: int | None = None, n_threads_batch: int | None = None,
            lengths: list[int] | None = None, forced_prefix: int | None = None,
            ) -> ServedFigures:
    """Medians and spreads of timed requests (``ttft_s``, ``gen_s``, ``request_s``,
    ``finish_reason`` each). A request that stopped before ``gen_tokens`` is an error: its
    speed would be of another workload. ``lengths``: the measured prompts' token counts, kept
    when any differs from ``prompt_tokens``."""
    if not runs:
        raise TunerError("no served request was timed")
    early = [r.get("finish_reason") for r in runs if r.get("finish_reason") != "length"]
    if gen_tokens and early:
        raise TunerError(f"a served request ended with finish_reason {early[0]!r} before "
                         f"{gen_tokens} tokens; every end-of-generation token should be "
                         "biased away")
    gen = None
    if gen_tokens >= 2 and all(r["gen_s"] > 0 for r in runs):
        gen = Stat.of([(gen_tokens - 1) / r["gen_s"] for r in runs])
    ttft = Stat.of([r["ttft_s"] for r in runs])
    request = Stat.of([r["request_s"] for r in runs])
    return ServedFigures(
        source=source, requests=len(runs), warmup=warmup, prompt_tokens=prompt_tokens,
        gen_tokens=gen_tokens, max_tokens=max_tokens_of(gen_tokens), n_threads=n_threads, n_threads_batch=n_threads_batch,
        ttft_s=ttft, gen_tps=gen, request_s=request, max_prefix_reuse=max_prefix_reuse,
        unstable=widest_spread(ttft, gen, request) > UNSTABLE_SPREAD,
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        prompt_lengths=list(lengths) if lengths and set(lengths) != {prompt_tokens} else None,
        forced_prefix=forced_prefix)
