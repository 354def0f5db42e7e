"""Where does generation speed drift inside a long-lived worker? A diagnosis run for a CUDA
machine (issue: figures fall as a worker makes more contexts).

    python docs/benchmarks/probes/drift_probe.py --model M --lib builds/default/lib --contexts 24 --out DIR

Each condition runs in its own spawned process (as a tuner worker does), loads the model once,
then makes ``--contexts`` contexts one after another, cycling n_batch / n_ubatch (settings that
do not change generation), and measures pp and tg with tuner's own Bench on each. Conditions
switch one suspect at a time:

- ``worker``:       the worker as it was: Python log callback + NVML sampling thread while timing
- ``no-sampler``:   log callback, no sampling thread
- ``no-callback``:  sampling thread, llama.cpp's own logger (stderr to a file)
- ``bare``:         neither
- ``one-context``:  as ``worker``, but one context reused (per-context state vs elapsed time)

Per context it also records the process's thread count, RSS, log lines received during the timed
region, and the per-repetition times of the first repetitions (how much warm-up llama.cpp needs).
Writes ``drift_probe.json`` and prints a table last."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository

CONDITIONS = {
    "worker": {"callback": True, "sampler": True, "fresh": True},
    "no-sampler": {"callback": True, "sampler": False, "fresh": True},
    "no-callback": {"callback": False, "sampler": True, "fresh": True},
    "bare": {"callback": False, "sampler": False, "fresh": True},
    "one-context": {"callback": True, "sampler": True, "fresh": False},
}
BATCHES = [(512, 512), (1024, 512), (2048, 1024), (2048, 2048), (4096, 1024), (1024, 1024)]


def _proc_status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("Threads", "VmRSS"):
            out[k] = int(v.split()[0])
    return out


class _Sampler:
    """The observer the worker had until this probe: NVML memory read every 10 ms from a thread
    while the timed decodes ran."""

    def __init__(self) -> None:
        import threading

        import pynvml

        pynvml.nvmlInit()
        self.nv, self.h = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        self.available, self._stop, self._t = True, threading.Event(), None
        self._threading = threading

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.nv.nvmlDeviceGetComputeRunningProcesses(self.h)

    def start(self) -> None:
        self._stop.clear()
        self._t = self._threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


def run_condition(name: str, model_path: str, lib: str, n_ctx_i: int, prompt: int, gen: int,
                  out_path: str) -> None:
    cfg = CONDITIONS[name]
    os.environ["LLAMA_CPP_LIB_PATH"] = lib
    log_file = out_path + ".log"
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    import llama_cpp

    from tuner.specs import ContextSettings, Workload
    from tuner.worker.bench import Bench, context_params
    from tuner.worker.logcapture import LogCapture

    log = LogCapture(log_file + ".cb")
    if cfg["callback"]:
        log.install(llama_cpp)
    llama_cpp.llama_backend_init()
    gpu = _Sampler()
    mp_ = llama_cpp.llama_model_default_params()
    mp_.n_gpu_layers = -1
    model = llama_cpp.llama_model_load_from_file(model_path.encode(), mp_)
    wl = Workload(prompt_tokens=prompt, gen_tokens=gen, repetitions=3, warmup=0)
    threads = os.cpu_count() or 1
    rows = []
    ctx = None
    for i in range(n_ctx_i):
        nb, nu = BATCHES[i % len(BATCHES)] if cfg["fresh"] else BATCHES[0]
        cs = ContextSettings(n_batch=nb, n_ubatch=nu, flash_attn=True)
        if ctx is None or cfg["fresh"]:
            ctx = llama_cpp.llama_init_from_model(model, context_params(llama_cpp, cs, wl.n_ctx,
                                                                         threads))
        bench = Bench(llama_cpp, model, ctx)
        reps = []
        chunks_before = len(log._chunks)
        if cfg["sampler"] and gpu.available:
            gpu.start()
        for _ in range(5):
            reps.append((bench.pp_run(wl, nb), bench.tg_run(wl, nb)))
        if cfg["sampler"] and gpu.available:
            gpu.stop()
        chunks_during = len(log._chunks) - chunks_before
        kept = reps[1:]
        rows.append({
            "i": i, "n_batch": nb, "n_ubatch": nu,
            "pp_tps": statistics.median(prompt / a for a, _ in kept),
            "tg_tps": statistics.median(gen / b for _, b in kept),
            "rep_pp_s": [a for a, _ in reps], "rep_tg_s": [b for _, b in reps],
            "log_chunks_during_timing": chunks_during, **_proc_status(),
            "cpu_s": sum(os.times()[:2]),
        })
        if cfg["fresh"]:
            llama_cpp.llama_free(ctx)
            ctx = None
    Path(out_path).write_text(json.dumps(rows))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--lib", required=True)
    ap.add_argument("--contexts", type=int, default=24)
    ap.add_argument("--prompt", type=int, default=2048)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    spawn = mp.get_context("spawn")
    results = {}
    for name in a.conditions.split(","):
        path = str(a.out / f"probe-{name}.json")
        t0 = time.time()
        p = spawn.Process(target=run_condition, args=(name, a.model, os.path.abspath(a.lib),
                                                       a.contexts, a.prompt, a.gen, path))
        p.start()
        p.join()
        if p.exitcode != 0 or not Path(path).exists():
            results[name] = {"error": f"exit {p.exitcode}"}
            continue
        results[name] = {"rows": json.loads(Path(path).read_text()),
                         "wall_s": round(time.time() - t0, 1)}
    (a.out / "drift_probe.json").write_text(json.dumps(results, indent=1))
    print("| condition | tg t/s first 3 | tg t/s last 3 | drift | pp drift | threads first/last "
          "| log lines while timing | rep0 tg vs rest |")
    print("|---|---|---|---|---|---|---|---|")
    for name, res in results.items():
        if "rows" not in res:
            print(f"| {name} | {res['error']} |")
            continue
        rows = res["rows"]
        first = statistics.median(r["tg_tps"] for r in rows[:3])
        last = statistics.median(r["tg_tps"] for r in rows[-3:])
        ppf = statistics.median(r["pp_tps"] for r in rows[:3])
        ppl = statistics.median(r["pp_tps"] for r in rows[-3:])
        rep0 = statistics.median(r["rep_tg_s"][0] / statistics.median(r["rep_tg_s"][1:])
                                 for r in rows)
        print(f"| {name} | {first:,.1f} | {last:,.1f} | {(last - first) / first * 100:+.1f}% | "
              f"{(ppl - ppf) / ppf * 100:+.1f}% | {rows[0]['Threads']}/{rows[-1]['Threads']} | "
              f"{sum(r['log_chunks_during_timing'] for r in rows)} | x{rep0:.2f} |")


if __name__ == "__main__":
    main()
