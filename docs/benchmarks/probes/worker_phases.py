"""Where a trial worker's seconds go on a GPU: the question behind a finalist round's cost (each
round is a fresh worker per config, about 6 s on an H100 with a 7B model in run 23 of
docs/benchmarks.md, of which the timed repetitions are about 2 s).

Each of ``--workers`` fresh workers (tuner's own Runner, as a sweep starts them) is timed from
the parent: the probe (a spawned process: its imports, the library load and the backend's
start, up to its Hello), the first trial (the model load, the placement proofs, the context, the
warm-up and the timed repetitions), a second trial of the same settings in the same worker (a
new context, the warm-up and the repetitions only), and the stop. The load and context seconds
come from the worker; the rest is the difference.

    python3 docs/benchmarks/probes/worker_phases.py --model M.gguf --out phases.json [--lib-dir DIR]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from probe_args import probe_parser, probe_spec, probe_workload, request_seconds

from tuner.specs import TrialSpec, Workload
from tuner.worker.protocol import Measured
from tuner.worker.runner import Runner


def one_worker(model: Path, spec: TrialSpec, wl: Workload, lib_dir: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp, Runner(model, Path(tmp), {spec.model.build: lib_dir},
                                                      trials_per_worker=2, sentinel=False) as r:
        t0 = time.perf_counter()
        r.probe_hello(spec.model, keep=True)
        t1 = time.perf_counter()
        first = r.run(spec, wl)
        t2 = time.perf_counter()
        second = r.run(spec, wl)
        t3 = time.perf_counter()
        r.shutdown()
        t4 = time.perf_counter()
    m1, m2 = first.reply, second.reply
    if not (isinstance(m1, Measured) and isinstance(m2, Measured)) or m1.pruned or m2.pruned:
        raise SystemExit(f"error: a trial ended {first.state.value} / {second.state.value}: "
                         f"{first.error or second.error}")
    timed2 = sum(m2.pp_seconds) + sum(m2.tg_seconds)
    return {
        "probe_s": t1 - t0, "first_trial_s": t2 - t1, "second_trial_s": t3 - t2, "stop_s": t4 - t3,
        "load_s": first.hello.load_seconds if first.hello else None,
        "context_s": [m1.context_seconds, m2.context_seconds],
        "timed_reps_s": timed2, "warmups": m2.warmups,
        "request_s": [request_seconds(m, wl) for m in (m1, m2)],
    }


def main() -> None:
    ap = probe_parser(__doc__ or "")
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    spec = probe_spec(args, 2048, 512)
    wl = probe_workload(args)
    rows = [one_worker(args.model, spec, wl, args.lib_dir) for _ in range(args.workers)]
    args.out.write_text(json.dumps({"model": str(args.model), "spec": spec.label(), "rows": rows},
                                   indent=1))
    keys = ["probe_s", "first_trial_s", "second_trial_s", "stop_s", "load_s", "timed_reps_s"]
    print("| " + " | ".join(["worker", *keys, "first - second - load"]) + " |")
    print("|" + "---|" * (len(keys) + 2))
    for i, row in enumerate(rows):
        extra = row["first_trial_s"] - row["second_trial_s"] - (row["load_s"] or 0)
        print("| " + " | ".join([str(i + 1), *(f"{row[k]:.2f}" for k in keys), f"{extra:.2f}"])
              + " |")
    print(f"warm-ups per trial: {rows[0]['warmups']}; request s (first, second trial): "
          + "; ".join(f"{r['request_s'][0]:.3f}, {r['request_s'][1]:.3f}" for r in rows))


if __name__ == "__main__":
    main()
