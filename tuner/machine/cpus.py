"""How many CPU threads a worker gives llama.cpp when the trial does not set them.

llama.cpp's own default (``cpu_get_num_math`` in llama-bench and the examples) is one thread per
physical core: hyper-threads that share a core slow the CPU threadpool's spin-waits and the
thread that launches GPU kernels. The tuner measures with the same default, so its figures and
llama-bench's describe the same thing, and records the count with every measurement."""

from __future__ import annotations

import os
from pathlib import Path

SYS_CPU = Path("/sys/devices/system/cpu")


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask; every CPU where there is none)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def physical_cores(sys_cpu: Path = SYS_CPU) -> int:
    """Distinct physical cores among the usable CPUs, from each CPU's thread siblings (what
    llama.cpp reads). Without that information: half the CPUs above 4, as llama.cpp falls back."""
    siblings = set()
    cpus = usable_cpus()
    for cpu in cpus:
        try:
            siblings.add((sys_cpu / f"cpu{cpu}" / "topology" / "thread_siblings").read_text().strip())
        except OSError:
            siblings.clear()
            break
    if siblings:
        return len(siblings)
    n = len(cpus)
    return n // 2 if n > 4 else max(1, n)


def default_threads() -> int:
    return physical_cores()
