"""Issue 31 on a GPU (benchmark tooling, run by benchmarks/gpu_session.sh's fit phase): a GPU made small
by a process holding its memory, the memory plan's predicted boundary against the one
llama-bench finds, llama-bench over the layer counts and cache types the sweep searched, and
tuner's winner beside the best of them.

    python3 benchmarks/partial_offload.py hold --leave-gib 8 --ready FILE
    python3 benchmarks/partial_offload.py compare --model M --results DIR --bench DIR --out DIR \
        --sweep-log FILE
    python3 benchmarks/partial_offload.py disk --shape qwen2.5-14b   # GiB of disk to make it
    python3 benchmarks/partial_offload.py replay --model M --free-mib 4095 --ngl 17 \
        --kv f16 --n-ubatch 512 --peak-mib 3488   # a recorded trial's peak through calibrate
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT, GEN, N_CTX = 2048, 128, 2176
# (label, K/V type, flash attention): as the plan's rows plan them (a quantized V needs FA)
CACHES = (("f16", "f16", 0), ("q8_0", "q8_0", 1))


def hold(leave_gib: float, ready: Path) -> None:
    """Hold all but ``leave_gib`` GiB of GPU 0 until killed."""
    import torch

    torch.cuda.init()
    free, total = torch.cuda.mem_get_info(0)
    take = free - int(leave_gib * 2**30)
    block = torch.empty(max(take, 0), dtype=torch.uint8, device="cuda:0")
    free_after, _ = torch.cuda.mem_get_info(0)
    ready.write_text(json.dumps({"held_mib": block.numel() / 2**20, "free_mib": free_after / 2**20,
                                 "total_mib": total / 2**20}) + "\n")
    while True:
        time.sleep(3600)


def _env(bench: Path) -> dict[str, str]:
    """The environment that makes bench/bin's tools load the installed package's libraries."""
    search = (bench / "LD_LIBRARY_PATH").read_text().strip() \
        if (bench / "LD_LIBRARY_PATH").is_file() else str(bench / "lib")
    return {**os.environ, "LD_LIBRARY_PATH": f"{search}:{os.environ.get('LD_LIBRARY_PATH', '')}"}


def _run(bench: Path, model: Path, ngl: int, tk: str, fa: int | str, test: list[str],
         reps: int, extra: list[str] | None = None, ub: int = 512) -> list[dict] | None:
    """One llama-bench invocation; its JSON rows, or None when it could not load or run."""
    env = _env(bench)
    cmd = [str(bench / "bin" / "llama-bench"), "-m", str(model), *test, "-ngl", str(ngl),
           "-ctk", tk, "-ctv", tk, "-fa", str(fa), "-b", "2048", "-ub", str(ub), "-r", str(reps),
           *(extra or []), "-o", "json"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        return None
    try:
        rows = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return None
    return rows if isinstance(rows, list) and rows else None


# The tuner's request as llama-bench measures it: pp2048 (context 2048) and tg128 at depth
# 2048 (context 2176, the sweep's n_ctx); the probe: one token at depth 2048 (the same cache).
PP = ["-p", str(PROMPT), "-n", "0"]
TG = ["-p", "0", "-n", str(GEN), "-d", str(PROMPT)]
PROBE = ["-p", "0", "-n", "1", "-d", str(PROMPT)]


def _bench(bench: Path, model: Path, ngl: int, tk: str, fa: int | str,
           extra: list[str] | None = None, ub: int = 512) -> dict | None:
    pp = _run(bench, model, ngl, tk, fa, PP, 2, extra, ub)
    tg = _run(bench, model, ngl, tk, fa, TG, 2, extra, ub) if pp else None
    if not pp or not tg:
        return None
    out: dict = {"ngl": ngl, "kv": tk, "fa": fa, "ub": ub, "pp_tps": pp[0].get("avg_ts"),
                 "tg_tps": tg[0].get("avg_ts")}
    if out["pp_tps"] and out["tg_tps"]:
        out["request_s"] = PROMPT / out["pp_tps"] + GEN / out["tg_tps"]
    return out


# How far the boundary probe walks from the plan's prediction: run 30's plan was 5 layers short
# and its probe, capped at 5, stopped exactly there (so "at least").
PROBE_STEPS = 12


def _boundary(bench: Path, model: Path, start: int, tk: str, fa: int, top: int) -> int | None:
    """The most layers llama-bench loads and runs (a 2048-token prompt), searched from the
    plan's prediction up (or down) one layer at a time, at most PROBE_STEPS probes each way."""
    def ok(n: int) -> bool:
        return _run(bench, model, n, tk, fa, PROBE, 1) is not None
    n = start
    if ok(n):
        while n < top and n + 1 - start <= PROBE_STEPS and ok(n + 1):
            n += 1
        return n
    while n > 0 and start - n <= PROBE_STEPS:
        n -= 1
        if ok(n):
            return n
    return None


def _experts_boundary(bench: Path, model: Path, start: int, tk: str, fa: int,
                      n_layer: int, ngl: int) -> int | None:
    """The fewest first layers whose experts on the host (llama-bench -ncmoe, every layer on
    the GPU) let llama-bench load and run, from the plan's fewest down (or up), at most
    PROBE_STEPS probes each way."""
    def ok(k: int) -> bool:
        return _run(bench, model, ngl, tk, fa, PROBE, 1, ["-ncmoe", str(k)]) is not None
    k = start
    if ok(k):
        while k > 0 and start - (k - 1) <= PROBE_STEPS and ok(k - 1):
            k -= 1
        return k
    while k < n_layer and k - start <= PROBE_STEPS:
        k += 1
        if ok(k):
            return k
    return None


# llama-fit-params' answer on stdout: "-c N -ngl M", then -ts (several devices) and -ot (tensor
# overrides: a MoE model's expert tensors on the host) where it set them; the -ot list quoted
# (tools/fit-params/fit-params.cpp) or not (the example in its README).
OVERHEAD_LINE = re.compile(r"the process overhead is ([\d,]+) MiB")
FIT_LINE = re.compile(r'-c (\d+) -ngl (-?\d+)(?: -ts (\S+))?(?: -ot "?([^"\s]*)"?)?')


def fit_choice(bench: Path, model: Path, n_ctx: int | None) -> dict[str, Any]:
    """What llama.cpp's own fit (common/fit.cpp, as llama-server's default --fit on does)
    chooses for ``model`` on the memory free now: llama-fit-params of the same source, loading
    the installed package's libraries. ``n_ctx`` set: the context is the user's and only the
    layers move; None: the model's trained context, reduced until it fits (llama-server's
    default). An error entry where it cannot say."""
    exe = bench / "bin" / "llama-fit-params"
    if not exe.is_file():
        return {"error": f"no {exe} (benchmarks/installed_bench.py builds it beside llama-bench)"}
    cmd = [str(exe), "-m", str(model), *(["-c", str(n_ctx)] if n_ctx else [])]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(bench), timeout=300)
    except subprocess.TimeoutExpired:
        return {"error": "llama-fit-params ran over 300 s"}
    m = FIT_LINE.search(proc.stdout)
    said = [ln.split(": ", 1)[-1] for ln in proc.stderr.splitlines() if "params_fit" in ln]
    if proc.returncode != 0 or m is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"llama-fit-params exit {proc.returncode}: {tail}", "log": said}
    return {"n_ctx": int(m[1]), "ngl": int(m[2]), "ts": m[3], "ot": m[4], "log": said,
            "args": m[0]}


def part_args(model: Path, ms: Any, n_cpu_moe: int) -> list[str]:
    """llama-bench's ``-ot`` for the ModelSettings ``ms``'s part of a layer's FFN on the host
    (ffn_on_host) at ``n_cpu_moe`` layers' experts on the host (the part's layer follows
    theirs); none without a part."""
    from tuner.deploy.llamaserver import ffn_override_args

    return ffn_override_args(model, ms.model_copy(update={"n_cpu_moe": n_cpu_moe}))


def _fit_row(bench: Path, model: Path, fit: dict[str, Any]) -> dict | None:
    """llama-bench at llama.cpp's fit: its layers and tensor overrides, llama.cpp's defaults
    otherwise (f16 cache, flash attention auto, n_ubatch 512, n_batch 2048)."""
    if "ngl" not in fit:
        return None
    extra = [*(["-ts", fit["ts"].replace(",", "/")] if fit.get("ts") else []),
             *(["-ot", fit["ot"].replace(",", ";")] if fit.get("ot") else [])]
    return _bench(bench, model, fit["ngl"], "f16", "auto", extra)


def compare(a: argparse.Namespace) -> int:
    from tuner.models import memplan
    from tuner.results.studystore import default_storage, list_studies, records_of
    from tuner.worker.gpumem import free_mib

    a.out.mkdir(parents=True, exist_ok=True)
    layout = memplan.read_layout(a.model)
    free = free_mib(0) or 0.0
    budget = memplan.Budget(free_mib=free)
    url = default_storage(a.results)
    studies = list_studies(url)
    records = records_of(url, studies[0]) if studies else []
    searched = sorted({r.spec.model.n_gpu_layers for r in records})
    usable = [r for r in records if r.usable and r.objective is not None]
    best = min(usable, key=lambda r: r.objective or 0.0) if usable else None
    # The overhead the sweep's first trial measured (tuner/search/offload.py calibrate), if said.
    said = a.sweep_log.read_text() if a.sweep_log and a.sweep_log.is_file() else ""
    found = OVERHEAD_LINE.search(said)
    calibrated = memplan.Budget(free_mib=free, overhead_mib=float(found[1].replace(",", "")),
                                margin_mib=0.0) if found else None  # as calibrate makes it
    rows, bounds = [], {}
    for tk, _tv, fa in CACHES:
        ctx = memplan.Context(n_ctx=N_CTX, type_k=tk, type_v=tk, n_ubatch=512, flash_attn=bool(fa))
        predicted = memplan.most_layers(layout, budget, ctx)
        after = memplan.most_layers(layout, calibrated, ctx) if calibrated else None
        measured = _boundary(a.bench, a.model, after or predicted, tk, fa, layout.n_offloadable)
        bounds[tk] = {"predicted": predicted, "calibrated": after, "measured": measured,
                      "gpu_mib_predicted": memplan.place(layout, predicted, ctx).gpu.total / 2**20}
        # A mixture of experts: the fewest layers' experts on the host, planned and measured
        fewest = memplan.fewest_experts_on_host(layout, budget, ctx)
        if fewest is not None:
            bounds[tk]["experts_predicted"] = fewest
            bounds[tk]["experts_measured"] = _experts_boundary(
                a.bench, a.model, fewest, tk, fa, layout.n_layer, layout.n_offloadable)
        # Lean (device time is scarce): the measured boundary (more layers on the GPU were
        # faster at every step run 29 measured) and the sweep's winner's count.
        near = {measured} if measured is not None else set()
        if best is not None:
            near.add(best.spec.model.n_gpu_layers)
        for n in sorted(near):
            if n < 0 or (measured is not None and n > measured):
                continue
            # in both load modes: llama-bench's best counts the mode the search can choose
            for lm in a.load_modes:
                if (r := _bench(a.bench, a.model, n, tk, fa, ["-lm", lm])) is not None:
                    rows.append({**r, "lm": lm})
            # Kept as it goes: a lease that ends mid-compare still brings these back.
            (a.out / "partial-offload.partial.json").write_text(json.dumps(
                {"boundaries": bounds, "llama_bench": rows, "searched_layers": searched},
                indent=1) + "\n")
    # llama-bench at the tuner's winner itself (its layers, cache, flash attention, n_ubatch
    # and CPU threads where it chose them): the comparison in one tool's measure.
    # A winner with experts on the host (n_cpu_moe K, every layer on the GPU): llama-bench's
    # -ncmoe at K and one fewer (the faster, if it loads) and one more, the same cache. A winner
    # with part of a layer's FFN on the host (ffn_on_host): the same -ot override, of the layer
    # after each count's experts.
    winner_row = None
    if best is not None:
        c = best.spec.context
        threads = ["-t", str(c.n_threads)] if c.n_threads else []

        def part_at(each: int) -> list[str]:
            return part_args(a.model, best.spec.model, each)
        # the winner's load mode (use_mmap off: -lm none); the other one measured below
        mode, other = (["-lm", "mmap"], ["-lm", "none"]) if best.spec.model.use_mmap \
            else (["-lm", "none"], ["-lm", "mmap"])
        k = best.spec.model.n_cpu_moe
        ngl = layout.n_offloadable if best.spec.model.n_gpu_layers < 0 else \
            best.spec.model.n_gpu_layers
        for each in ([k - 1, k, k + 1] if k else [0]):
            if k and not 1 <= each <= layout.n_layer:
                continue
            moe = ["-ncmoe", str(each)] if each else []
            row = _bench(a.bench, a.model, ngl, c.type_k, int(bool(c.flash_attn)),
                         threads + moe + part_at(each) + mode, ub=c.n_ubatch)
            if row is None:
                continue
            row["n_cpu_moe"] = each
            row["lm"] = mode[1]
            row["ffn_on_host"] = best.spec.model.ffn_on_host
            if each == k:
                row["tuner_winner"] = True
                winner_row = row
            rows.append(row)
    # The same in the other load mode (-lm none: the host's weights in a pinned CUDA host
    # buffer, which op offload uploads a prompt's weights from faster; -lm mmap: mapped from
    # the file): how much the search's choice of use_mmap was worth. Not among the rows.
    unmapped = None
    if winner_row is not None and best is not None and other[1] in a.load_modes:
        moe = ["-ncmoe", str(k)] if k else []
        unmapped = _bench(a.bench, a.model, ngl, c.type_k, int(bool(c.flash_attn)),
                          threads + moe + part_at(k) + other, ub=c.n_ubatch)
    fastest = min((r for r in rows if "request_s" in r), key=lambda r: r["request_s"],
                  default=None)
    # llama.cpp's own fit at the sweep's context (the layers it moves), its llama-bench figures,
    # and what llama-server's default (no -c) would choose (the context it reduces to).
    fit = fit_choice(a.bench, a.model, N_CTX)
    fit_row = None if a.no_fit_bench else _fit_row(a.bench, a.model, fit)
    fit_default = fit_choice(a.bench, a.model, None)
    sweep_s, budget_lines = None, []
    for line in said.splitlines():
        if line.startswith("sweep exit"):
            sweep_s = line
        # the budget, the calibration, the walk past the plan (offload.walk_up), the boundary
        if line.startswith(("time budget:", "memory plan: trial", "memory plan against loads")) \
                or " loaded and ran where the plan gave " in line:
            budget_lines.append(line)
    tb: dict[str, Any] | None = None if best is None else {
        "ngl": best.spec.model.n_gpu_layers, "n_cpu_moe": best.spec.model.n_cpu_moe,
        "ffn_on_host": best.spec.model.ffn_on_host, "use_mmap": best.spec.model.use_mmap,
        "kv": best.spec.context.type_k,
        "fa": best.spec.context.flash_attn, "n_ubatch": best.spec.context.n_ubatch,
        "threads": best.spec.context.n_threads, "request_s": best.objective,
        "verified": best.verification.verified}
    states = {s: sum(1 for r in records if r.state.value == s)
              for s in {r.state.value for r in records}}
    result = {"free_mib_at_compare": free, "boundaries": bounds, "llama_bench": rows,
              "searched_layers": searched, "sweep": sweep_s, "llama_bench_at_winner": winner_row,
              "llama_bench_at_winner_load_none": unmapped,
              "tuner_best": tb, "states": states, "time_budget": budget_lines, "llama_fit": fit, "llama_fit_bench": fit_row,
              "llama_fit_default_ctx": fit_default}
    (a.out / "partial-offload.json").write_text(json.dumps(result, indent=1) + "\n")
    print("| cache | plan's most layers | after calibration | llama-bench's most layers | "
          "plan GPU MiB |")
    print("|---|---|---|---|---|")
    for tk, b in bounds.items():
        print(f"| {tk} | {b['predicted']} | {b['calibrated']} | {b['measured']} | "
              f"{b['gpu_mib_predicted']:,.0f} |")
    for tk, b in bounds.items():
        if "experts_predicted" in b:
            print(f"experts on the host, kv {tk}: the plan's fewest n_cpu_moe "
                  f"{b['experts_predicted']}, llama-bench's fewest {b['experts_measured']}")
    print()
    print("| ngl | n_cpu_moe | kv | fa | n_ubatch | load mode | pp t/s | tg t/s | request s "
          "(2048/pp + 128/tg) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mark = " (tuner's winner)" if r.get("tuner_winner") else ""
        mark += f" ffn_on_host {r['ffn_on_host']}" if r.get("ffn_on_host") else ""
        print(f"| {r['ngl']}{mark} | {r.get('n_cpu_moe', 0)} | {r['kv']} | {r['fa']} | {r['ub']} | "
              f"{r.get('lm', 'mmap')} | "
              f"{r.get('pp_tps', 0):,.0f} | {r.get('tg_tps', 0):.1f} | "
              f"{r.get('request_s', 0):.3f} |")
    print()
    print(f"tuner: {tb}")
    print(f"llama-bench fastest: {fastest}")
    if tb and fastest:
        print(f"tuner (its own measure) / llama-bench best request time: "
              f"{tb['request_s'] / fastest['request_s']:.3f}")
    if winner_row and fastest and winner_row.get("request_s"):
        print(f"llama-bench at tuner's winner / llama-bench best request time: "
              f"{winner_row['request_s'] / fastest['request_s']:.3f}")
    print(f"llama.cpp fit at n_ctx {N_CTX} (llama-fit-params): "
          f"{fit.get('args') or fit.get('error')}")
    print(f"llama-bench at llama.cpp's fit: {fit_row}")
    if tb and fit_row and fit_row.get("request_s"):
        print(f"tuner / llama.cpp fit request time: {tb['request_s'] / fit_row['request_s']:.3f}")
    if winner_row and unmapped and winner_row.get("request_s") and unmapped.get("request_s"):
        print(f"llama-bench at tuner's winner, the other load mode ({other[1]}) / its own "
              f"request time: {unmapped['request_s'] / winner_row['request_s']:.3f} (pp "
              f"{unmapped['pp_tps']:,.0f} vs {winner_row['pp_tps']:,.0f} t/s)")
    if winner_row and fit_row and winner_row.get("request_s") and fit_row.get("request_s"):
        print(f"llama-bench at tuner's winner / at llama.cpp's fit request time: "
              f"{winner_row['request_s'] / fit_row['request_s']:.3f}")
    print(f"llama.cpp fit, llama-server's default context: "
          f"{fit_default.get('args') or fit_default.get('error')}")
    print(f"sweep: {sweep_s}")
    for line in budget_lines:
        print(line)
    return 0


# Bytes per weight of a quantized file, at most (q8_0: 34 bytes a block of 32; the k-quants
# and q4/q5 types are smaller); the f16 file is 2.
QUANT_BYTES = 34 / 32


def disk_need_gib(shape: str) -> float:
    """Disk the model of ``shape`` needs at once while benchmarks/gpu_session.sh makes it:
    the f16 file and the quantized one beside it (the f16 is removed after), plus 4 GiB."""
    from tuner.models.archgen import MOE_SHAPES, qwen3moe_layout
    from tuner.models.modelgen import SHAPES, _tensors

    if shape in MOE_SHAPES:
        n = sum(math.prod(s) for _, s in qwen3moe_layout(**MOE_SHAPES[shape]))
        return n * (2 + QUANT_BYTES) / 2**30 + 4
    d = SHAPES[shape]
    n = sum(math.prod(s) for _, s in _tensors(d["n_layer"], d["n_embd"], d["n_head"],
                                                d["n_head_kv"], d["n_ff"], d["n_vocab"]))
    return n * (2 + QUANT_BYTES) / 2**30 + 4


def replay(a: argparse.Namespace) -> int:
    """The product's calibration (tuner/search/offload.py calibrate) applied to a trial a run
    recorded: its setting and NVML peak, the free memory it ran beside. Prints the plan's most
    layers per cache type and n_ubatch as planned and as calibrated (no GPU needed)."""
    from tuner.models import memplan
    from tuner.search import offload
    from tuner.specs import ContextSettings, ModelSettings, TrialSpec, Workload

    wl = Workload(prompt_tokens=PROMPT, gen_tokens=GEN)
    layout = memplan.read_layout(a.model)
    plan = memplan.make_plan(layout, wl.n_ctx, memplan.Budget(free_mib=a.free_mib))
    op = offload.OffloadPlan(plan=plan, layers=offload.search_layers(plan))
    spec = TrialSpec(model=ModelSettings(build="installed", device="cuda", n_gpu_layers=a.ngl),
                     context=ContextSettings(n_batch=max(a.n_ubatch, 512), n_ubatch=a.n_ubatch,
                                             flash_attn=a.kv != "f16", type_k=a.kv,
                                             type_v=a.kv))
    after, line = offload.calibrate(op, spec, wl, a.peak_mib)
    print(line)
    print("| kv | n_ubatch | planned | calibrated |")
    print("|---|---|---|---|")
    for r0, r1 in zip(plan.rows, after.plan.rows):
        print(f"| {r0.kv} | {r0.n_ubatch} | {r0.most_layers} | {r1.most_layers} |")
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hold")
    h.add_argument("--leave-gib", type=float, default=8.0)
    h.add_argument("--ready", type=Path, required=True)
    c = sub.add_parser("compare")
    c.add_argument("--model", type=Path, required=True)
    c.add_argument("--results", type=Path, required=True)
    c.add_argument("--bench", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--sweep-log", type=Path, default=None)
    c.add_argument("--load-modes", type=lambda v: tuple(v.split(",")), default=("mmap", "none"),
                   help="llama-bench's -lm values each row is measured in (default mmap,none; "
                        "none alone: a lease too short for both, and the winner's other mode "
                        "is then not measured either)")
    c.add_argument("--no-fit-bench", action="store_true",
                   help="ask llama.cpp's fit what it chooses, without llama-bench at it")
    d = sub.add_parser("disk", help="GiB of disk making the model of --shape needs")
    d.add_argument("--shape", required=True)
    r = sub.add_parser("replay", help="a recorded trial's peak through the calibration")
    r.add_argument("--model", type=Path, required=True)
    r.add_argument("--free-mib", type=float, required=True)
    r.add_argument("--ngl", type=int, required=True)
    r.add_argument("--kv", default="f16")
    r.add_argument("--n-ubatch", type=int, default=512)
    r.add_argument("--peak-mib", type=float, required=True)
    a = p.parse_args()
    if a.cmd == "replay":
        return replay(a)
    if a.cmd == "disk":
        print(f"{disk_need_gib(a.shape):.0f}")
        return 0
    if a.cmd == "hold":
        hold(a.leave_gib, a.ready)
        return 0
    return compare(a)


if __name__ == "__main__":
    raise SystemExit(main())
