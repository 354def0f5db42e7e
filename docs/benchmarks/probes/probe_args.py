"""What every one-model GPU probe takes on its command line (docs/benchmarks/probes/worker_phases.py,
docs/benchmarks/probes/shared_rounds.py): the model, the output file, the build's library folder, the
device and the workload; the trial settings of that build; a trial's request seconds."""

from __future__ import annotations

import argparse
from pathlib import Path

from tuner.specs import ContextSettings, ModelSettings, TrialSpec, Workload
from tuner.worker.protocol import Measured
from tuner.worker.trialrecord import measurement


def probe_parser(doc: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--lib-dir", default=None, help="a build's library folder (default: installed)")
    ap.add_argument("--device", default="cuda", help="cpu: a try on a machine without a GPU")
    ap.add_argument("--prompt-tokens", type=int, default=2048)
    ap.add_argument("--gen-tokens", type=int, default=128)
    return ap


def probe_spec(args: argparse.Namespace, n_batch: int, n_ubatch: int) -> TrialSpec:
    """Flash attention, f16 cache, the given batch sizes, on the installed library or the
    one in ``--lib-dir``."""
    build = "installed" if args.lib_dir is None else "build"
    return TrialSpec(model=ModelSettings(device=args.device, build=build),
                     context=ContextSettings(n_batch=n_batch, n_ubatch=n_ubatch, flash_attn=True))


def probe_workload(args: argparse.Namespace) -> Workload:
    return Workload(prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens)


def request_seconds(m: Measured, wl: Workload) -> float:
    """The median request seconds of a worker's answer, as a sweep's record computes them."""
    return measurement(m, wl, 0.0).request_seconds.median
