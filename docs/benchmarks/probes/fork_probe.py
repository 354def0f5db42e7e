"""Could a sweep's workers fork from a process that has already imported llama_cpp, rather than
each start as a new interpreter? Two questions for a CUDA machine, each answered by a run:

1. Does importing llama_cpp (the CUDA build) start CUDA? After the import, the process must hold
   no GPU device file open (/dev/nvidiactl, /dev/nvidia0, /dev/nvidia-uvm: what cuInit opens).
   A process forked after CUDA started cannot use CUDA.
2. What does a worker gain: seconds from asking for a process to its model being loaded and one
   token decoded on the GPU, for ``--procs`` processes spawned (a new interpreter: imports,
   library load, CUDA start, model load) and as many forked from a server that imported
   llama_cpp once (CUDA start and model load only), interleaved.

    python3 docs/benchmarks/probes/fork_probe.py --model M.gguf --out fork.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import time


def device_files() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/dev/nvidia"):
            out.append(target)
    return sorted(set(out))


def work(model: str, conn) -> None:  # type: ignore[no-untyped-def]
    """In the child: load the model on the GPU, decode one token, report what CUDA opened."""
    t0 = time.perf_counter()
    import llama_cpp

    imported = time.perf_counter()
    llama_cpp.llama_backend_init()
    mp_ = llama_cpp.llama_model_default_params()
    mp_.n_gpu_layers = -1
    m = llama_cpp.llama_model_load_from_file(model.encode(), mp_)
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = 256
    ctx = llama_cpp.llama_init_from_model(m, cp)
    batch = llama_cpp.llama_batch_get_one((llama_cpp.llama_token * 1)(1), 1)
    rc = llama_cpp.llama_decode(ctx, batch)
    llama_cpp.llama_synchronize(ctx)
    done = time.perf_counter()
    conn.send({"decode_rc": rc, "import_s": imported - t0, "ready_s": done - t0,
               "device_files": device_files()})
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(m)


def timed(ctx: mp.context.BaseContext, model: str) -> dict:
    parent, child = ctx.Pipe()
    t0 = time.perf_counter()
    p = ctx.Process(target=work, args=(model, child))
    p.start()
    child.close()
    answer = parent.recv() if parent.poll(300) else {"error": "no answer in 300 s"}
    answer["asked_to_ready_s"] = time.perf_counter() - t0
    p.join(60)
    answer["exitcode"] = p.exitcode
    return answer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--procs", type=int, default=4)
    args = ap.parse_args()
    spawn = mp.get_context("spawn")
    fork = mp.get_context("forkserver")
    # The server imports llama_cpp, then reports (from a first child, before any CUDA use)
    # whether the import left a GPU device file open: inherited by every fork.
    fork.set_forkserver_preload(["llama_cpp"])
    parent, child = fork.Pipe()
    p = fork.Process(target=_report_inherited, args=(child,))
    p.start()
    inherited = parent.recv()
    p.join()
    rows = []
    for _ in range(args.procs):
        rows.append({"how": "spawned", **timed(spawn, args.model)})
        rows.append({"how": "forked", **timed(fork, args.model)})
    with open(args.out, "w") as f:
        json.dump({"inherited_device_files": inherited, "rows": rows}, f, indent=1)
    print(f"GPU device files open in a fork of the preloaded server, before any CUDA call: "
          f"{inherited or 'none'}")
    print("| start | asked -> model loaded, 1 token decoded (s) | in the child: import (s) | decode rc |")
    print("|---|---|---|---|")
    for how in ("spawned", "forked"):
        got = [r for r in rows if r["how"] == how]
        ready = [r["asked_to_ready_s"] for r in got]
        imp = [r.get("import_s", float("nan")) for r in got]
        print(f"| {how} | {statistics.median(ready):.2f} ({min(ready):.2f}-{max(ready):.2f}) | "
              f"{statistics.median(imp):.3f} | {sorted({r.get('decode_rc') for r in got})} |")


def _report_inherited(conn) -> None:  # type: ignore[no-untyped-def]
    conn.send(device_files())


if __name__ == "__main__":
    main()
