"""Do configs measured together in one fresh worker get the figures they get alone? The check
behind the finalists' shared rounds (tuner/search/finalists.py: up to 3 configs of one worker
kind per fresh worker, the order turned by one place per round).

Each of ``--rounds`` rounds measures the same configs twice, in the order "separate, shared"
or "shared, separate" (alternating, so neither mode always runs first): separate, each config
in its own fresh worker, as the finalists did before; shared, all of them in one fresh worker,
in the order turned by the round number, as the finalists do now. Both through tuner's own
Runner, as a sweep starts them. The table gives, per config, the median request time of each
mode, their ratio with a 95% interval (paired by round), and, for the shared mode, the request
time by position in the process; then the seconds each mode took.

    python3 docs/benchmarks/probes/shared_rounds.py --model M.gguf --out shared.json [--lib-dir DIR]
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from probe_args import probe_parser, probe_spec, probe_workload, request_seconds

from tuner.search.finalists import interval, turned
from tuner.specs import TrialSpec, Workload
from tuner.worker.protocol import Measured
from tuner.worker.runner import Runner

# Settings of the kind that reach the finalists on a GPU (runs 23-24 of docs/benchmarks.md):
# flash attention, f16 cache, large batches, different ubatch sizes.
CONFIGS = [(2048, 512), (2048, 1024), (1024, 1024)]


def in_worker(model: Path, specs: list[TrialSpec], wl: Workload, lib_dir: str | None,
              logs: Path) -> list[float]:
    """The specs in one fresh worker, in order; each one's median request seconds."""
    out = []
    with Runner(model, logs, {specs[0].model.build: lib_dir}, trials_per_worker=len(specs),
                sentinel=False) as r:
        for spec in specs:
            o = r.run(spec, wl)
            if not isinstance(o.reply, Measured) or o.reply.pruned:
                raise SystemExit(f"error: {spec.label()} ended {o.state.value}: {o.error}")
            out.append(request_seconds(o.reply, wl))
    return out


def main() -> None:
    ap = probe_parser(__doc__ or "")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    specs = [probe_spec(args, b, u) for b, u in CONFIGS]
    wl = probe_workload(args)
    n = len(specs)
    separate: list[list[float]] = [[] for _ in specs]
    shared: list[list[float]] = [[] for _ in specs]
    by_position: list[list[tuple[int, float]]] = [[] for _ in specs]  # (config, seconds)
    seconds = {"separate": 0.0, "shared": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        for rnd in range(args.rounds):
            modes = ["separate", "shared"] if rnd % 2 == 0 else ["shared", "separate"]
            for mode in modes:
                t0 = time.perf_counter()
                if mode == "separate":
                    for i, spec in enumerate(specs):
                        separate[i].append(in_worker(args.model, [spec], wl, args.lib_dir,
                                                     logs)[0])
                else:
                    order = turned(list(range(n)), rnd)
                    got = in_worker(args.model, [specs[i] for i in order], wl, args.lib_dir,
                                    logs)
                    for pos, (i, t) in enumerate(zip(order, got)):
                        shared[i].append(t)
                        by_position[pos].append((i, t))
                seconds[mode] += time.perf_counter() - t0
    rows = []
    for i, spec in enumerate(specs):
        ratio = interval([s / p for s, p in zip(shared[i], separate[i])], 0.95)
        rows.append({"config": spec.label(), "separate_s": separate[i], "shared_s": shared[i],
                     "ratio_shared_to_separate": [ratio.value, ratio.low, ratio.high]})
    positions = []
    for pos in range(n):
        rel = [t / statistics.median(separate[i]) for i, t in by_position[pos]]
        positions.append({"position": pos + 1, "shared_over_separate_median": rel})
    args.out.write_text(json.dumps({"model": str(args.model), "rounds": args.rounds,
                                    "workload": wl.model_dump(), "configs": rows,
                                    "positions": positions, "seconds": seconds}, indent=1))
    print("| config | separate, median s | shared, median s | shared / separate, mean (95% interval) |")
    print("|---|---|---|---|")
    for r in rows:
        m, lo, hi = r["ratio_shared_to_separate"]
        print(f"| {r['config']} | {statistics.median(r['separate_s']):.4f} | "
              f"{statistics.median(r['shared_s']):.4f} | {m:.4f} ({lo:.4f}-{hi:.4f}) |")
    print()
    print("| position in the shared worker | request s / the config's separate median, mean (min-max) |")
    print("|---|---|")
    for p in positions:
        xs = p["shared_over_separate_median"]
        print(f"| {p['position']} | {statistics.fmean(xs):.4f} ({min(xs):.4f}-{max(xs):.4f}) |")
    print()
    print(f"seconds: separate {seconds['separate']:.1f} ({n * args.rounds} workers), shared "
          f"{seconds['shared']:.1f} ({args.rounds} workers)")


if __name__ == "__main__":
    main()
