"""Proof that a trial worker is spawned, not forked (a process forked after CUDA started cannot
use CUDA). A test sets ``MARKER`` in its own process only. A spawned worker is a new interpreter:
it runs sitecustomize (tests/workerhooks/site), imports this module anew (``MARKER`` None) and,
with ``TUNER_TEST_SPAWN_RECORD`` set, appends its pid and the ``MARKER`` it sees to that file
before it serves. A forked worker would share the test's memory, ``MARKER`` included, and run
no startup hook: it writes no record."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

VAR = "TUNER_TEST_SPAWN_RECORD"
MARKER: str | None = None


def patch(main: ModuleType) -> None:
    """Record, as ``main.worker_main`` starts, this process's pid and ``MARKER``."""
    serve = main.worker_main

    @functools.wraps(serve)
    def recorded(*args: Any) -> Any:
        with open(os.environ[VAR], "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "marker": MARKER}) + "\n")
        return serve(*args)

    main.worker_main = recorded


def records(path: Path) -> list[dict[str, Any]]:
    """What the workers recorded, in order ([] when none did)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]
