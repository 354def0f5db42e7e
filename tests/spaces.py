"""Small search spaces for tests on a 2-core machine (test data)."""

from __future__ import annotations

from pathlib import Path

import yaml


def write_space(path: Path, **values: object) -> Path:
    data = {"n_batch": [64], "n_ubatch": [64], "flash_attn": [False], "kv_cache": ["f16/f16"]}
    data.update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path
