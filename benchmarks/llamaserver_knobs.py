"""Issue 30 on a GPU: where llama-server's time per generated token goes beyond the raw decode
loop, and which server settings move it. One config (a fully offloaded model), one session:

- the raw loop, Llama.eval and sampling in a fresh process (tuner/deploy/breakdown.py);
- llama-server as tuner deploys it (tuner/deploy/llamaserver.py server_args), then one change at
  a time: its debug log off, CPU threads, backend (GPU) sampling, the sampler chain without the
  samplers that are no-ops at these parameters, CPU polling; and two request changes that only
  explain (no repeat penalty; greedy). Each: the product's HTTP workload (measure_http: one
  warm-up, ``--requests`` streamed completions, llama_cpp.server's sampling sent), then the
  server's own per-token figure (``timings.predicted_per_token_ms`` of native /completion
  requests: decode + sampling, no HTTP streaming) and a greedy 32-token text, compared across
  variants (backend sampling must not change a greedy answer).

    PYTHONPATH=/tmp/site:$PWD python3 benchmarks/llamaserver_knobs.py --model M.gguf \\
        --builds builds --n-batch 2048 --n-ubatch 1024 --flash-attn --threads 4 --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tuner.builds.catalog import _installed_lib_dir  # noqa: E402
from tuner.deploy.breakdown import measure_breakdown  # noqa: E402
from tuner.deploy.httpserve import free_port, measure_http  # noqa: E402
from tuner.deploy.llamaserver import (  # noqa: E402
    SAMPLING,
    find_server,
    process_env,
    running,
    server_args,
    server_env,
    wait_healthy,
)
from tuner.deploy.served import prompts_for  # noqa: E402
from tuner.deploy.service import service_env  # noqa: E402
from tuner.specs import ContextSettings, ModelSettings, TrialSpec, Workload  # noqa: E402

QUIET = ["--log-verbosity", "5"]  # PROOF_ARGS' debug level: the rest only formats the log
# The default chain less the samplers that do nothing at llama_cpp.server's defaults (dry 0,
# top_n_sigma -1, typical 1.0, xtc 0): what backend sampling needs to run the whole chain on the
# GPU (those four have no GPU implementation in this llama.cpp).
LEAN_CHAIN = ["--samplers", "penalties;top_k;top_p;min_p;temperature"]
# (name, flags removed, flags added, request sampling changes)
VARIANTS: list[tuple[str, list[str], list[str], dict[str, Any]]] = [
    ("deployed", [], [], {}),
    ("log default", QUIET, [], {}),
    ("log default, -t 1", QUIET, ["-t", "1", "-tb", "1"], {}),
    ("log default, -t cores", QUIET, ["-t", "CORES", "-tb", "CORES"], {}),
    ("log default, --poll 0", QUIET, ["--poll", "0"], {}),
    ("backend sampling", QUIET, ["--backend-sampling"], {}),
    ("backend sampling, lean chain", QUIET, ["--backend-sampling", *LEAN_CHAIN], {}),
    ("lean chain (CPU)", QUIET, LEAN_CHAIN, {}),
    ("request: repeat_penalty 1.0", QUIET, [], {"repeat_penalty": 1.0}),
    ("request: greedy (temperature 0)", QUIET, [], {"temperature": 0.0}),
]


def _edit(args: list[str], remove: list[str], add: list[str], cores: int) -> list[str]:
    out = list(args)
    if remove:
        for i in range(len(out) - len(remove) + 1):
            if out[i:i + len(remove)] == remove:
                del out[i:i + len(remove)]
                break
    for flag in ("-t", "-tb"):
        if flag in add and flag in out:  # the variant's count replaces the deployed one
            j = out.index(flag)
            del out[j:j + 2]
    host = out.index("--host")
    add = [str(cores) if a == "CORES" else a for a in add]
    return out[:host] + add + out[host:]


def _native(url: str, prompt: str, n: int, sampling: dict[str, Any]) -> dict[str, Any]:
    body = {"prompt": prompt, "n_predict": n, "cache_prompt": False, "ignore_eos": True,
            "seed": 1234, **sampling}
    r = httpx.post(f"{url}/completion", json=body, timeout=600)
    r.raise_for_status()
    return dict(r.json())


def run_variant(binary: Path, spec: TrialSpec, wl: Workload, model: str, lib: str,
                threads: int, requests: int, variant: tuple[str, list[str], list[str],
                                                            dict[str, Any]]) -> dict[str, Any]:
    name, remove, add, req = variant
    cores = os.cpu_count() or 1
    sampling = {**SAMPLING, **req}
    with tempfile.TemporaryDirectory(prefix="knobs-") as tmp:
        port, log = free_port(None), Path(tmp) / "llama-server.log"
        args = _edit(server_args(spec, wl, model, threads, port=port), remove, add, cores)
        url = f"http://127.0.0.1:{port}"
        with running(binary, args, process_env(server_env(spec, lib, model)), Path(tmp), log) as proc:
            wait_healthy(proc, url, log, 600)
            fig = measure_http(url, model, wl, service_env(spec, lib, model), requests, 600,
                               sampling=sampling, source="llama-server")
            made = prompts_for(model, wl.prompt_tokens, 3, service_env(spec, lib, model))
            per_token = [float(_native(url, p, wl.gen_tokens, sampling)["timings"]
                               ["predicted_per_token_ms"]) for p in made.prompts]
            greedy = _native(url, made.prompts[0], 32, {**sampling, "temperature": 0.0})
    gen = fig.gen_tps
    return {"variant": name, "args": args, "sampling": sampling,
            "gen_tps": gen.model_dump() if gen else None,
            "ms_per_token_http": 1e3 / gen.median if gen else None,
            "ttft_s": fig.ttft_s.median, "request_s": fig.request_s.median,
            "server_ms_per_token": per_token,
            "server_ms_per_token_median": statistics.median(per_token),
            "greedy_text": greedy.get("content", "")}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--builds", type=Path, default=Path("builds"))
    ap.add_argument("--n-batch", type=int, default=2048)
    ap.add_argument("--n-ubatch", type=int, default=512)
    ap.add_argument("--flash-attn", action="store_true")
    ap.add_argument("--threads", type=int, default=4, help="the deployed server threads")
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=2048)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cpu: a smoke test of the script on a machine without a GPU")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    lib = str(_installed_lib_dir())
    binary = find_server(lib, a.builds)
    if binary is None:
        print(f"no llama-server for {lib} in {a.builds}", file=sys.stderr)
        return 3
    spec = TrialSpec(model=ModelSettings(build="installed", device=a.device, n_gpu_layers=-1),
                     context=ContextSettings(n_batch=a.n_batch, n_ubatch=a.n_ubatch,
                                             flash_attn=a.flash_attn))
    wl = Workload(prompt_tokens=a.prompt_tokens, gen_tokens=a.gen_tokens,
                  n_ctx=a.prompt_tokens + a.gen_tokens)
    bd = measure_breakdown(a.model, spec, -1, wl, lib, threads=a.threads, repetitions=5)
    (a.out / "breakdown.json").write_text(bd.model_dump_json(indent=1) + "\n")
    raw = next((s.ms_per_token.median for s in bd.stages
                if s.key == "raw" and s.ms_per_token), None)
    rows = []
    for v in VARIANTS:
        try:
            rows.append(run_variant(binary, spec, wl, a.model, lib, a.threads, a.requests, v))
        except Exception as e:  # noqa: BLE001 - one variant failing is a result too
            rows.append({"variant": v[0], "error": f"{type(e).__name__}: {e}"})
        (a.out / "knobs.json").write_text(json.dumps({"raw_ms": raw, "rows": rows}, indent=1))
        print(json.dumps({k: rows[-1].get(k) for k in ("variant", "ms_per_token_http",
                                                       "server_ms_per_token_median",
                                                       "error")}), flush=True)
    print(f"\nraw decode loop {raw} ms/token; breakdown: " +
          "; ".join(bd.lines()))
    print("| variant | HTTP ms/token | gen t/s | share of raw | server ms/token | TTFT s | "
          "greedy text as deployed |")
    print("|---|---|---|---|---|---|---|")
    base = next((r.get("greedy_text") for r in rows if r["variant"] == "log default"), None)
    for r in rows:
        if "error" in r:
            print(f"| {r['variant']} | {r['error'][:80]} |||||")
            continue
        ms = r["ms_per_token_http"]
        print(f"| {r['variant']} | {ms:.3f} | {1e3 / ms:.1f} | "
              f"{(raw / ms if raw else 0):.0%} | {r['server_ms_per_token_median']:.3f} | "
              f"{r['ttft_s']:.3f} | {'same' if r['greedy_text'] == base else 'DIFFERS'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
