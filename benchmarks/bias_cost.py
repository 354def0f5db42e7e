"""The per-token cost of a request's logit_bias in llama-cpp-python 0.3.36, alone: the custom
sampler's numpy view over the token data (``Llama._init_sampler``'s ``apply_func``), the bias
processor's copy of the logits (``Llama._create_completion``'s ``logit_bias_processor``) and the
write-back, at two vocabulary sizes. Every served request tuner times carries such a bias (the
end-of-generation tokens), so this is part of the served figures a client without a bias would
not see; the per-token breakdown's ``bias`` stage measures it inside a real generation.

    .venv/bin/python benchmarks/bias_cost.py

CPU only (no model): the work is numpy on the host."""

from __future__ import annotations

import ctypes
import statistics
import time
from typing import Any

import llama_cpp
import numpy as np

BIAS = {2: -1e9, 0: -1e9}  # two end-of-generation tokens, as a request's logit_bias
DTYPE = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)


def main() -> None:
    for n in (49152, 151936):
        arr = (llama_cpp.llama_token_data * n)()
        for i in range(n):
            arr[i].id = i
        addr = ctypes.addressof(arr)
        def proc(scores: Any, bias: dict[int, float] = BIAS) -> Any:
            new = np.copy(scores)
            for t, s in bias.items():
                new[t] = s + scores[t]
            return new

        def apply(n: int = n, addr: int = addr) -> None:
            rec = np.recarray(shape=(n,), dtype=DTYPE,
                              buf=(llama_cpp.llama_token_data * n).from_address(addr))
            rec.logit[:] = proc(rec.logit)

        for _ in range(50):
            apply()
        ms = []
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(200):
                apply()
            ms.append((time.perf_counter() - t0) / 200 * 1e3)
        print(f"n_vocab {n}: {statistics.median(ms):.3f} ms/token "
              f"(min {min(ms):.3f}, max {max(ms):.3f}, 7 x 200 calls)")


if __name__ == "__main__":
    main()
