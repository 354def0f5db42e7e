"""GPU run for issue 10 (needs a CUDA machine): after `tuner sweep`, measure the best record's
served figures over a few server thread counts, write the production config with the fastest
served setting and its figures, then `tuner verify` it from another working directory.

    PYTHONPATH=/tmp/site:$PWD python3 benchmarks/served_verify.py \
        --results /tmp/bench/results --model /tmp/bench/model.gguf \
        --out /tmp/bench/out/production.yaml --builds builds --threads 1,2,4,8,16

Prints one JSON line per served measurement and the verify output; exits with verify's code."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tuner.builds.catalog import resolve_build
from tuner.deploy.prodconfig import write_production
from tuner.deploy.servedmeasure import measure_served
from tuner.results.studystore import default_storage, list_studies, records_of, require_study


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--builds", type=Path, default=Path("builds"))
    ap.add_argument("--threads", default="1,2,4,8,16")
    ap.add_argument("--via", default="server", choices=["worker", "server"])
    ap.add_argument("--requests", type=int, default=5)
    args = ap.parse_args()
    records = [r for s in list_studies(default_storage(args.results))
               for r in records_of(default_storage(args.results), s)
               if r.usable]
    final = require_study(default_storage(args.results)).finalists()
    best = (next(r for r in records if r.number == final.winner_trial) if final
            else min(records, key=lambda r: r.objective))
    build = best.spec.model.build
    lib_dir = None if build == "installed" else str(Path(resolve_build(build, args.builds)
                                                         .lib_dir).absolute())
    served = {}
    for threads in (int(t) for t in args.threads.split(",")):
        fig = measure_served(args.model, best.spec, best.workload, lib_dir,
                             requests=args.requests, threads=threads, via=args.via)
        served[threads] = fig
        print(json.dumps({"threads": threads, "summary": fig.summary(),
                          "figures": fig.model_dump(mode="json")}), flush=True)
    threads, fig = min(served.items(), key=lambda kv: kv[1].request_s.median)
    print(f"chosen n_threads {threads}: {fig.summary()}", flush=True)
    env = {"LLAMA_CPP_LIB_PATH": lib_dir} if lib_dir else {}
    written = write_production(best, args.out, model_path=args.model,
                               results_dir=args.results, build_lib_dir=lib_dir, env=env,
                               served=fig, threads=threads,
                               extra={"finalists": final.model_dump(mode="json")} if final else None)
    with tempfile.TemporaryDirectory() as elsewhere:
        proc = subprocess.run([sys.executable, "-m", "tuner", "verify", str(written.path)],
                              cwd=elsewhere, text=True, capture_output=True)
    print(proc.stdout + proc.stderr, flush=True)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
