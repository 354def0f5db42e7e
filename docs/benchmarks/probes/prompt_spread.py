"""Where does a prompt figure's spread come from: inside a process (warming over repetitions) or
between processes? One config's pp<P> (depth 0, n_ctx = P, as llama-bench's pp test makes it)
measured in fresh processes, interleaved across the configs, by three runners:

- ``llama-bench``: one process per run, ``-r R``;
- ``llama-bench pinned``: the same under ``taskset -c CPU`` (is the CPU placement of the
  launching thread the process-level factor?), unless ``--pin ''``;
- ``llama-bench ARGS``: the same with more options (``--lb-extra '--poll 0'``: is llama-bench's
  thread pool, spin-waiting at ``--poll 50`` by default, the factor?);
- ``tuner``: one tuner worker (tuner/worker/runner.py) per run, ``R`` repetitions, the same context
  size; its steady-state check may drop slow first repetitions (the warm-ups column counts).

    python docs/benchmarks/probes/prompt_spread.py --model M --builds builds --build force-cublas \\
        --config 2048/1024 --config 1024/1024 --procs 6 --reps 12 --out O

Prints a table per runner and config: every process's samples (t/s, in order), the median of
its repetitions after the third, and across processes min / median / max of those medians.
Writes prompt_spread.json with every sample."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))  # fidelity_space

from fidelity_space import llama_bench  # noqa: E402

from tuner.machine.cpus import default_threads  # noqa: E402
from tuner.specs import ContextSettings, ModelSettings, TrialSpec, Workload  # noqa: E402
from tuner.worker.runner import Runner  # noqa: E402


def tuner_run(runner: Runner, build: str, nb: int, nu: int, fa: bool, P: int,
              reps: int) -> dict[str, Any]:
    spec = TrialSpec(model=ModelSettings(build=build, device="cuda"),
                     context=ContextSettings(n_batch=nb, n_ubatch=nu, flash_attn=fa,
                                             type_k="f16", type_v="f16"))
    wl = Workload(prompt_tokens=P, gen_tokens=0, n_ctx=P, repetitions=reps, warmup=1)
    out = runner.run(spec, wl)
    runner.close()  # the next run gets a fresh process
    m = out.measured
    if m is None:
        raise SystemExit(f"tuner worker failed: {out.state} {out.error}\n" + "\n".join(out.log_tail))
    return {"samples": [P / s for s in m.pp_seconds], "warmups": m.warmups.get("pp")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--builds", type=Path, default=Path("builds"))
    ap.add_argument("--build", default="force-cublas")
    ap.add_argument("--config", action="append", required=True, help="n_batch/n_ubatch")
    ap.add_argument("--fa", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=2048)
    ap.add_argument("--procs", type=int, default=6)
    ap.add_argument("--reps", type=int, default=12)
    ap.add_argument("--pin", default="3", help="CPU for the pinned llama-bench runs ('': none)")
    ap.add_argument("--lb-extra", action="append", default=[],
                    help="another llama-bench runner with these options, e.g. '--poll 0'")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    P, threads = a.prompt, default_threads()
    binary = a.builds / a.build / "bin" / "llama-bench"
    lib = a.builds / a.build / "lib"
    configs = [tuple(int(x) for x in c.split("/")) for c in a.config]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    pinned = bool(a.pin) and subprocess.run(["taskset", "-c", a.pin, "true"]).returncode == 0
    # The workers' logs stay with the results: a worker that crashes says why there.
    logs = a.out / "worker-logs"
    logs.mkdir(parents=True, exist_ok=True)
    runner = Runner(a.model, logs, {a.build: str(lib.resolve())}, sentinel=False,
                    trials_per_worker=1)
    for _ in range(a.procs):
        for nb, nu in configs:
            name = f"b{nb}/u{nu}"
            test = ["-p", str(P), "-n", "0", "-d", "0"]
            rows, _ = llama_bench(binary, lib, a.model, [nb], [nu], bool(a.fa), "f16", "f16",
                                  test, a.reps, threads)
            runs.setdefault("llama-bench", {}).setdefault(name, []).append(
                {"samples": rows[0]["samples_ts"]})
            if pinned:
                rows, _ = llama_bench(binary, lib, a.model, [nb], [nu], bool(a.fa), "f16",
                                      "f16", test, a.reps, threads,
                                      wrap=["taskset", "-c", a.pin])
                runs.setdefault(f"llama-bench pinned (cpu {a.pin})", {}).setdefault(
                    name, []).append({"samples": rows[0]["samples_ts"]})
            for extra in a.lb_extra:
                rows, _ = llama_bench(binary, lib, a.model, [nb], [nu], bool(a.fa), "f16",
                                      "f16", test, a.reps, threads, extra=extra.split())
                runs.setdefault(f"llama-bench {extra}", {}).setdefault(name, []).append(
                    {"samples": rows[0]["samples_ts"]})
            runs.setdefault("tuner", {}).setdefault(name, []).append(
                tuner_run(runner, a.build, nb, nu, bool(a.fa), P, a.reps))
    lines = [f"## pp{P} of {a.model.name}, build {a.build}, fa {a.fa}, {threads} threads: "
             f"{a.procs} fresh processes per runner and config (interleaved), {a.reps} "
             "repetitions each", ""]
    for runner_name, by_cfg in runs.items():
        for name, procs in by_cfg.items():
            meds = [statistics.median(p["samples"][3:] or p["samples"]) for p in procs]
            lines.append(f"**{runner_name}, {name}**: median of each process's repetitions "
                         f"4-{a.reps}: min {min(meds):,.0f}, median {statistics.median(meds):,.0f}, "
                         f"max {max(meds):,.0f} (spread {(max(meds) / min(meds) - 1) * 100:.1f}%)")
            for p, med in zip(procs, meds):
                extra = f" (tuner warm-ups {p['warmups']})" if "warmups" in p else ""
                lines.append(f"    {med:>9,.0f} | " + " ".join(f"{x:,.0f}" for x in p["samples"])
                             + extra)
            lines.append("")
    (a.out / "prompt_spread.json").write_text(json.dumps(runs, indent=1))
    (a.out / "prompt_spread.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
