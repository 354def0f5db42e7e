"""How much CPU a GPU-resident llama.cpp process burns while it generates, under OpenMP's default
wait policy (idle CPU threads may spin between graphs) and ``OMP_WAIT_POLICY=PASSIVE`` (they
sleep), and the generation speed under each. The question it answered (run 23 of
docs/benchmarks.md): does a sweep's worker take the cores a kernel compile beside it at idle
priority would use? On an H100 with a 7B model, no: one CPU-second per second under both.

Each policy runs in its own fresh process (the policy is read when the library loads), the two
interleaved ``--procs`` times. A process loads the model fully offloaded, then per repetition
evaluates a ``--prompt``-token prompt and generates ``--gen`` tokens one at a time (each eval
synchronizes), reading its CPU time (all threads: getrusage) and the wall clock around the
generation. The first repetition is warm-up and discarded.

    python3 docs/benchmarks/probes/spin_probe.py --model M.gguf --out spin.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, os, resource, sys, time
import llama_cpp
model, prompt_n, gen_n, reps, threads = sys.argv[1], *map(int, sys.argv[2:6])
llm = llama_cpp.Llama(model_path=model, n_gpu_layers=-1, n_ctx=prompt_n + gen_n + 16,
                      n_batch=2048, n_ubatch=512, n_threads=threads, n_threads_batch=threads,
                      flash_attn=True, verbose=False)
nv = llm.n_vocab()
prompt = [1 + (i * 7919) % (nv - 1) for i in range(prompt_n)]
cpu = lambda: (lambda r: r.ru_utime + r.ru_stime)(resource.getrusage(resource.RUSAGE_SELF))
out = []
for rep in range(reps + 1):
    llm.reset()
    llm.eval(prompt)
    c0, t0 = cpu(), time.perf_counter()
    tok = 1
    for _ in range(gen_n):
        llm.eval([tok])
        tok = 1 + (tok * 31) % (nv - 1)
    wall, used = time.perf_counter() - t0, cpu() - c0
    if rep:  # the first is warm-up
        out.append({"tg_tps": gen_n / wall, "cpu_per_wall": used / wall})
print(json.dumps(out))
"""


def run(model: str, policy: str | None, args: argparse.Namespace) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    proc = subprocess.run([sys.executable, "-c", CHILD, model, str(args.prompt), str(args.gen),
                           str(args.reps), str(args.threads)], env=env, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode:
        raise SystemExit(f"error: probe process failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--prompt", type=int, default=2048)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    got: dict[str, list[dict]] = {"default": [], "PASSIVE": []}
    for _ in range(args.procs):
        for name in got:
            got[name] += run(args.model, None if name == "default" else name, args)
    summary = {name: {"cpu_per_wall_median": statistics.median(x["cpu_per_wall"] for x in xs),
                      "tg_tps_median": statistics.median(x["tg_tps"] for x in xs),
                      "tg_tps_min": min(x["tg_tps"] for x in xs),
                      "tg_tps_max": max(x["tg_tps"] for x in xs), "samples": len(xs)}
               for name, xs in got.items()}
    with open(args.out, "w") as f:
        json.dump({"threads": args.threads, "prompt": args.prompt, "gen": args.gen,
                   "samples": got, "summary": summary}, f, indent=1)
    print(f"{'wait policy':12} {'CPU s per s':>11} {'tg t/s median (min-max)':>26}")
    for name, s in summary.items():
        print(f"{name:12} {s['cpu_per_wall_median']:11.2f} {s['tg_tps_median']:12.1f} "
              f"({s['tg_tps_min']:.1f}-{s['tg_tps_max']:.1f})")


if __name__ == "__main__":
    main()
