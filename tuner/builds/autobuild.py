"""The kernel builds a sweep makes for itself: the variants that could change what this
machine's GPUs run (tuner/builds/selection.py) and are not built yet, compiled side by side
before the first trial (so no compile ever runs while a figure is taken), the cores shared
between them. A build that cannot be made (no network to fetch the source, no nvcc, a failed
compile) is no reason to stop the sweep: it goes on with the builds it has and says the one
command that makes the missing one."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.builds.selection import MissingBuild
from tuner.errors import TunerError

Builder = Callable[..., Any]  # tuner.builds.buildmake.build_variant's signature


@dataclass
class AutoBuilt:
    built: list[str] = field(default_factory=list)  # variant names now in builds_dir
    failed: list[str] = field(default_factory=list)  # one line each: why, and the command
    jobs: int = 0  # compile jobs each build ran with


def jobs_each(n_builds: int, cpus: int | None = None) -> int:
    """The cores shared between the builds that run side by side (at least one each)."""
    return max(1, (cpus or os.cpu_count() or 1) // max(1, n_builds))


def build_missing(missing: list[MissingBuild], builds_dir: Path,
                  log: Callable[[str], None] = lambda _line: None,
                  builder: Builder | None = None) -> AutoBuilt:
    """Build every variant of ``missing`` into ``builds_dir``, side by side. ``builder`` is
    tuner's ``build_variant`` unless a test passes another."""
    if builder is None:
        from tuner.builds.buildmake import build_variant
        builder = build_variant
    make: Builder = builder
    out = AutoBuilt(jobs=jobs_each(len(missing)))
    if not missing:
        return out

    def one(m: MissingBuild) -> tuple[MissingBuild, str | None]:
        try:
            make(m.variant, source=None, builds_dir=builds_dir, cuda_arch=m.cuda_arch,
                    jobs=out.jobs, log=lambda line: log(f"[{m.variant}] {line}"))
            return m, None
        except (TunerError, OSError) as exc:  # BadInput, EnvironmentUnfit; a folder it can't use
            return m, str(exc).splitlines()[0] if str(exc) else type(exc).__name__

    with ThreadPoolExecutor(max_workers=len(missing)) as pool:
        for m, why in pool.map(one, missing):
            if why is None:
                out.built.append(m.variant)
            else:
                out.failed.append(f"build {m.variant} not made ({why}); `{m.command}` makes it "
                                  "(add --source with a local sdist where there is no network)")
    return out
