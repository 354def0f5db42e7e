"""llama_cpp.server's event loop and HTTP parser against its streamed speed (issue 30): uvicorn,
which llama_cpp.server's ``__main__`` runs with its ``auto`` choices, takes uvloop and httptools
when they can be imported, else asyncio's loop and h11. A deployment written by ``tuner sweep``
is served as ``tuner verify`` serves it (its sidecar's workload, streamed over HTTP, one warm-up
per server) with each pair, in alternating rounds; a pair is made by hiding the module(s) it
leaves out behind a folder on PYTHONPATH whose package of that name fails to import.

    .venv/bin/python benchmarks/event_loop.py --config configs/production.yaml \\
        --rounds 3 --requests 5 --out /tmp/event-loop.json

Prints per pair: generation ms per token (the median request's, and the range of the rounds'
medians), time to first token, and writes every round's figures to --out. ``--plain`` sends the
workload's prompts without its end-of-generation bias (llama-cpp-python applies a ``logit_bias``
over the whole vocabulary each token, which can hide the loop's share on a small model): the
figure is then the median gap between streamed tokens, over requests that streamed at least 16."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from tuner.deploy.deployed import local_url
from tuner.deploy.httpserve import free_port, measure_http, running_server, wait_ready
from tuner.deploy.served import prompts_for
from tuner.deploy.serververify import Deployment, load_deployment
from tuner.errors import TunerError
from tuner.machine.childenv import service_env

PAIRS = {  # name: the modules hidden from the server
    "asyncio + h11": ("uvloop", "httptools"),
    "uvloop + h11": ("httptools",),
    "asyncio + httptools": ("uvloop",),
    "uvloop + httptools": (),
}


def hide(modules: tuple[str, ...], root: Path) -> str:
    """A folder whose packages ``modules`` raise ImportError: first on PYTHONPATH, it hides them."""
    folder = root / ("hide-" + "-".join(modules) if modules else "hide-none")
    for m in modules:
        (folder / m).mkdir(parents=True, exist_ok=True)
        (folder / m / "__init__.py").write_text(f"raise ImportError('{m} hidden by event_loop.py')\n")
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


def plain_gaps(url: str, dep: Deployment, env: dict[str, str], requests: int,
               timeout_s: float) -> dict[str, Any]:
    """Streamed requests at the server's default sampling, no bias: per request the median gap
    between streamed tokens (ms), one warm-up discarded; their median and range."""
    made = prompts_for(dep.model_path, dep.workload.prompt_tokens, requests + 1, env)
    per: list[float] = []
    with httpx.Client(timeout=timeout_s) as client:
        for i, prompt in enumerate(made.prompts):
            body = {"prompt": prompt, "max_tokens": dep.workload.gen_tokens, "stream": True}
            stamps = []
            with client.stream("POST", f"{url}/v1/completions", json=body) as reply:
                for line in reply.iter_lines():
                    if line.startswith("data:") and "[DONE]" not in line:
                        stamps.append(time.perf_counter())
            gaps = [b - a for a, b in zip(stamps[1:], stamps[2:])]
            if i and len(stamps) >= 16:
                per.append(1000 * statistics.median(gaps))
    if not per:
        raise SystemExit("no request streamed 16 tokens: --plain needs a model that keeps going")
    return {"ms_per_token": statistics.median(per), "min": min(per), "max": max(per),
            "requests": len(per)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--plain", action="store_true", help="no end-of-generation bias")
    args = ap.parse_args()
    dep = load_deployment(args.config)
    installed = {m for m in ("uvloop", "httptools") if importlib.util.find_spec(m) is not None}
    pairs = {n: h for n, h in PAIRS.items() if set(PAIRS["asyncio + h11"]) - set(h) <= installed}
    base = service_env(dep.env)
    rows: dict[str, list[dict]] = {n: [] for n in pairs}  # per pair, a row per round
    with tempfile.TemporaryDirectory(prefix="event-loop-") as tmp:
        root = Path(tmp)
        for r in range(args.rounds):
            for name, hidden in pairs.items():
                path = os.pathsep.join(p for p in (hide(hidden, root), base.get("PYTHONPATH"),
                                                   os.pathsep.join(sys.path[1:])) if p)
                env = {**base, "PYTHONPATH": path}
                port = free_port(None)
                log = root / f"server-{r}-{len(rows[name])}.log"
                with ExitStack() as stack:
                    proc = stack.enter_context(running_server(dep.config, dep.config_path.name,
                                                              env, port, root, log))
                    wait_ready(proc, local_url(port), log, args.timeout)
                    row: dict[str, Any]
                    if args.plain:
                        row = plain_gaps(local_url(port), dep, env, args.requests, args.timeout)
                    else:
                        fig = measure_http(local_url(port), dep.model_path, dep.workload, env,
                                           args.requests, args.timeout)
                        gen = fig.gen_tps.median if fig.gen_tps else float("nan")
                        row = {"ms_per_token": 1000 / gen, "ttft_s": fig.ttft_s.median,
                               "figures": fig.model_dump(mode="json")}
                rows[name].append(row)
                print(f"round {r} {name}: {row['ms_per_token']:.3f} ms/token"
                      + (f", TTFT {row['ttft_s']:.3f} s" if "ttft_s" in row else ""), flush=True)
    print(f"\n{dep.config_path} ({dep.workload.prompt_tokens} + {dep.workload.gen_tokens}, "
          f"{args.rounds} rounds x {args.requests} requests, pairs alternating"
          f"{', no end-of-generation bias' if args.plain else ''})")
    print("| event loop + parser | ms/token (median of rounds) | rounds' range | TTFT s |")
    print("|---|---|---|---|")
    for name, got in rows.items():
        ms = [g["ms_per_token"] for g in got]
        ttft = (f"{statistics.median(g['ttft_s'] for g in got):.3f}" if not args.plain
                else "-")
        print(f"| {name} | {statistics.median(ms):.3f} | {min(ms):.3f}-{max(ms):.3f} | {ttft} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TunerError as e:
        print(f"error: {e.message}", file=sys.stderr)
        sys.exit(2)
