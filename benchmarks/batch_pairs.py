"""n_batch at a fixed n_ubatch, on recorded GPU trials: for every pair of completed trials in
docs/benchmarks that differ only in n_batch (512 against 2048, n_ubatch at most 512, same build,
layers, flash attention, cache type and prompt), the ratio of their request times. llama.cpp
computes a batch in n_ubatch pieces, so n_batch above n_ubatch should change little; the default
partial-offload space searches n_batch 2048 alone on this evidence (tuner/search/space.py).

    .venv/bin/python benchmarks/batch_pairs.py [docs/benchmarks]"""

from __future__ import annotations

import collections
import statistics
import sys
from pathlib import Path

from pydantic import ValidationError

from tuner.results.records import TrialRecord


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/benchmarks")
    pairs: dict[tuple, dict[int, list[float]]] = collections.defaultdict(dict)
    for f in sorted(root.rglob("*.jsonl")):
        for line in f.read_text().splitlines():
            try:
                r = TrialRecord.model_validate_json(line)
            except ValidationError:
                continue  # another kind of record
            if r.objective is None or r.state.value != "complete":
                continue
            c = r.spec.context
            key = (f.parent.name, r.spec.model.build, r.spec.model.n_gpu_layers, c.n_ubatch,
                   c.flash_attn, c.type_k, c.type_v, r.workload.prompt_tokens)
            pairs[key].setdefault(c.n_batch, []).append(r.objective)
    diffs = [100 * (statistics.median(d[512]) / statistics.median(d[2048]) - 1)
             for k, d in pairs.items() if 512 in d and 2048 in d and k[3] <= 512]
    if not diffs:
        print("no pairs")
        return 1
    q = statistics.quantiles(diffs, n=4)
    print(f"{len(diffs)} pairs: request time at n_batch 512 against 2048, same n_ubatch: "
          f"median {statistics.median(diffs):+.2f}%, quartiles {q[0]:+.2f}% / {q[2]:+.2f}%, "
          f"range {min(diffs):+.2f}% to {max(diffs):+.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
