"""GPU run for issue 30: where each millisecond of a served token goes, for a written production
config (the sweep's winner, or any config tuner wrote). In one session: the config served by a
real llama_cpp.server over HTTP (the workload of its sidecar, streamed, one warm-up), then the
in-process stages (raw decode loop, Llama.eval, server sampling, the EOG bias, streamed
create_completion) in a fresh process at the same server threads.

    PYTHONPATH=/tmp/site:$PWD python3 benchmarks/served_breakdown.py \\
        --config /tmp/bench/out/production.yaml --repetitions 5 --requests 5 \\
        --threads 4,16 --out /tmp/bench/breakdown.json

``--threads`` (default: the config's) measures the whole breakdown at each server thread count.
Prints each breakdown's lines and writes every breakdown (TokenBreakdown JSON) to --out."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tuner.deploy.breakdown import measure_breakdown
from tuner.deploy.servedmeasure import measure_served
from tuner.deploy.serververify import load_deployment
from tuner.errors import TunerError


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--threads", default=None, help="comma-separated server thread counts")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    dep = load_deployment(args.config)
    lib_dir = dep.env.get("LLAMA_CPP_LIB_PATH")
    trial = int((dep.sidecar.get("provenance") or {}).get("number", -1))
    threads = ([int(t) for t in args.threads.split(",")] if args.threads
               else [int(dep.config["models"][0].get("n_threads") or 0) or None])
    out = []
    for n in threads:
        served, error = None, None
        try:
            served = measure_served(dep.model_path, dep.spec, dep.workload, lib_dir,
                                    requests=args.requests, threads=n, via="server")
            print(f"threads {n}: served {served.summary()}", flush=True)
        except TunerError as e:
            error = e.message
            print(f"threads {n}: not served: {error}", flush=True)
        bd = measure_breakdown(dep.model_path, dep.spec, trial, dep.workload, lib_dir,
                               threads=n, served=served, served_error=error,
                               repetitions=args.repetitions)
        gpu = bd.gpu_share()
        print(f"threads {bd.threads}: breakdown (ms/token, adds, share)"
              + (f"; decode {gpu:.0%} of a served token" if gpu is not None else ""))
        for line in bd.lines():
            print("  " + line, flush=True)
        out.append(bd.model_dump(mode="json"))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
