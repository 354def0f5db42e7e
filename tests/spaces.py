"""Small search spaces for tests on a 2-core machine (test data)."""

from __future__ import annotations

from pathlib import Path

import yaml


def write_space(path: Path, **values: object) -> Path:
    """One llama.cpp thread per trial unless asked: with two threads on two busy cores (other
    tests, a parallel engineer, the sweep's own parent) each of llama.cpp's thread barriers
    waits for a descheduled thread, and a trial of the tiny model went from well under a second
    to minutes. Thread counts are tested where they are the subject."""
    data = {"n_batch": [64], "n_ubatch": [64], "flash_attn": [False], "kv_cache": ["f16/f16"],
            "n_threads": [1]}
    data.update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path
