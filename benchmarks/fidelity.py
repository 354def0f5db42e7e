"""Fidelity and gain, on a CUDA machine: the tuner's pp512 / pp2048 / tg128 against llama-bench
from the same build on the same settings, and the chosen config against llama-cpp-python's
defaults measured in the same run.

    python benchmarks/fidelity.py --model M --sweep-results DIR --builds builds --work W --out O

Reads the sweep's stored trials (the best verified one and the baseline), runs single-setting
`tuner sweep`s with the llama-bench workloads, runs each build's llama-bench with the same
settings, and prints the tables last. Every figure comes from this run."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tuner.reports.rows import is_baseline as measured_at_defaults  # noqa: E402
from tuner.results.records import TrialRecord  # noqa: E402
from tuner.results.studystore import default_storage, list_studies, records_of  # noqa: E402

TESTS = {"pp512": (512, 0), "pp2048": (2048, 0), "tg128": (0, 128)}
REPS = 10  # short tests (pp512 is ~40 ms on an H100/H200) need more samples


def sweep_records(results: Path) -> list[TrialRecord]:
    out: list[TrialRecord] = []
    for study in list_studies(default_storage(results)):
        out.extend(records_of(default_storage(results), study))
    return out


def is_baseline(r: TrialRecord) -> bool:
    """llama-cpp-python's defaults on the default kernel build."""
    return r.spec.model.build == "default" and measured_at_defaults(r)


def tuner_point(model: Path, r: TrialRecord, test: str, work: Path, builds: Path) -> dict:
    p, g = TESTS[test]
    c, m = r.spec.context, r.spec.model
    space = work / f"space-{r.spec_key}.yaml"
    space.write_text(json.dumps({
        "builds": [m.build], "n_gpu_layers": [m.n_gpu_layers], "n_batch": [c.n_batch],
        "n_ubatch": [c.n_ubatch], "flash_attn": [c.flash_attn],
        "kv_cache": [f"{c.type_k}/{c.type_v}"], "cuda_graphs": [m.cuda_graphs]}))
    res = work / "fidelity-results"
    study = f"fid-{r.spec_key}-{test}"
    cmd = [sys.executable, "-m", "tuner", "sweep", "--model", str(model), "--space",
           str(space), "--prompt-tokens", str(p), "--gen-tokens", str(g), "--repetitions",
           str(REPS), "--results", str(res), "--study", study, "--builds", str(builds),
           "--out", str(work / f"fid-{study}.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    recs = records_of(default_storage(res), study)
    if not recs or recs[-1].measurement is None:
        raise SystemExit(f"tuner {test} failed: {proc.stderr[-2000:]}")
    meas = recs[-1].measurement
    stat = meas.pp_tps if p else meas.tg_tps
    return {"median": stat.median, "min": stat.min, "max": stat.max,
            "verified": recs[-1].verification.verified, "summary": recs[-1].verification.summary}


def llama_bench(model: Path, r: TrialRecord, builds: Path, work: Path) -> dict[str, dict]:
    c, m = r.spec.context, r.spec.model
    binary = builds / m.build / "bin" / "llama-bench"
    cmd = [str(binary), "-m", str(model), "-p", "512,2048", "-n", "128", "-b", str(c.n_batch),
           "-ub", str(c.n_ubatch), "-fa", "1" if c.flash_attn else "0", "-ctk", c.type_k,
           "-ctv", c.type_v, "-ngl", "99", "-r", str(REPS), "-o", "json"]
    lib = str(builds / m.build / "lib")
    env = {**os.environ, "LD_LIBRARY_PATH": lib + ":" + os.environ.get("LD_LIBRARY_PATH", "")}
    if not m.cuda_graphs:
        env["GGML_CUDA_DISABLE_GRAPHS"] = "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    (work / f"llama-bench-{r.spec_key}.json").write_text(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"llama-bench failed: {proc.stderr[-2000:]}")
    out = {}
    for row in json.loads(proc.stdout):
        name = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
        ts = row.get("samples_ts") or [row["avg_ts"]]
        out[name] = {"avg": row["avg_ts"], "stddev": row["stddev_ts"], "min": min(ts),
                     "max": max(ts), "median": statistics.median(ts), "samples": ts,
                     "cmd": " ".join(cmd)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--sweep-results", type=Path, required=True)
    ap.add_argument("--builds", type=Path, default=Path("builds"))
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    records = sweep_records(a.sweep_results)
    usable = sorted((r for r in records if r.usable), key=lambda r: r.objective)
    base = next((r for r in records if is_baseline(r) and r.measurement), None)
    if not usable or base is None:
        raise SystemExit("the sweep has no verified best trial or no baseline trial")
    best = usable[0]
    lines = ["## Gain (sweep workload: 2048 prompt + 128 generated tokens)", "",
             "| trial | settings | pp t/s | tg t/s | request s | verified |",
             "|---|---|---|---|---|---|"]
    for tag, r in (("defaults", base), ("chosen", best)):
        mm = r.measurement
        lines.append(f"| {tag} #{r.number} | {r.spec.label()} | {mm.pp_tps.median:,.0f} | "
                     f"{mm.tg_tps.median:,.1f} | {mm.request_seconds.median:.4f} | "
                     f"{r.verification.summary} |")
    pp_x = best.measurement.pp_tps.median / base.measurement.pp_tps.median
    saved = 1 - best.measurement.request_seconds.median / base.measurement.request_seconds.median
    lines += ["", f"prompt throughput x{pp_x:.2f} (goal >= 1.9), request time "
              f"{saved * 100:.1f}% shorter (goal >= 15%)", ""]
    lines += [f"## Fidelity: tuner vs llama-bench, same build and settings, {REPS} repetitions "
              "each after warm-up; medians compared (llama-bench's mean shown too)", "",
              "| settings | test | tuner t/s median (min-max) | llama-bench t/s median (min-max)"
              " | llama-bench mean +- sd | diff of medians |", "|---|---|---|---|---|---|"]
    fid = []
    for r in {best.spec_key: best, base.spec_key: base}.values():
        lb = llama_bench(a.model, r, a.builds, a.work)
        for test in TESTS:
            t = tuner_point(a.model, r, test, a.work, a.builds)
            b = lb[test]
            diff = (t["median"] - b["median"]) / b["median"] * 100
            fid.append({"settings": r.spec.label(), "test": test, "tuner": t,
                        "llama_bench": b, "diff_pct": diff})
            lines.append(f"| {r.spec.label()} | {test} | {t['median']:,.1f} ({t['min']:,.1f}-"
                         f"{t['max']:,.1f}) | {b['median']:,.1f} ({b['min']:,.1f}-"
                         f"{b['max']:,.1f}) | {b['avg']:,.1f} +- {b['stddev']:,.1f} | "
                         f"{diff:+.2f}% |")
    worst = max(abs(f["diff_pct"]) for f in fid)
    lines += ["", f"largest difference {worst:.2f}% (goal <= 3%)"]
    (a.out / "fidelity.json").write_text(json.dumps({
        "gain": {"pp_ratio": pp_x, "request_saved": saved, "best": best.model_dump(mode="json",
                 exclude={"placement", "log_tail"}), "baseline_trial": base.number},
        "fidelity": fid}, indent=2))
    (a.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
