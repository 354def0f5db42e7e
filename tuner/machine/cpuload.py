"""How busy other processes kept this machine's CPUs while tuner measured: the machine's busy
CPU time (``/proc/stat``) less the CPU time of tuner's own process tree (itself, its reaped
children, and every descendant still running, from ``/proc/<pid>/stat``), over the wall time
times the CPU count.

Figures measured beside another busy process (a compile, another benchmark) are slower and
noisier than the machine gives alone: on 2 cores with a compiler on both, a CPU trial that
took 0.014 s per request quietly was re-measured at 4.8 s. A sweep says so instead of storing
such figures silently. Short-lived processes (a compiler's) count too: their time is in the
machine's total. Where ``/proc`` cannot be read (not Linux) there is no verdict."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

# /proc/stat's cpu line: user nice system idle iowait irq softirq steal (guest time is
# already inside user and nice); busy is all but idle and iowait.
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)
# /proc/<pid>/stat after the command's closing parenthesis: field 2 is the parent pid, 12-15
# utime, stime, cutime, cstime (0-based in the split).
_PPID, _TIMES = 1, slice(11, 15)


# Other processes' share of all CPUs from which a sweep says so (an idle machine: under 1%).
NOTED_SHARE = 0.15
SIDECAR_KEY = "machine_load"  # the sidecar's section: OtherLoad's fields, up to the write


@dataclass(frozen=True)
class CpuSnapshot:
    wall_s: float
    busy_s: float  # every CPU's busy time since boot
    ours_s: float  # tuner's process tree's CPU time


@dataclass(frozen=True)
class OtherLoad:
    share: float  # of all CPUs, 0-1: what other processes used over the window
    n_cpu: int
    seconds: float

    @property
    def noted(self) -> bool:
        return self.share >= NOTED_SHARE

    @classmethod
    def stored(cls, side: dict[str, object]) -> OtherLoad | None:
        """The load a sidecar kept (SIDECAR_KEY), or None (none kept, or not readable)."""
        data = side.get(SIDECAR_KEY)
        if not isinstance(data, dict):
            return None
        try:
            share, n_cpu, seconds = (float(data["share"]), int(data["n_cpu"]),
                                     float(data["seconds"]))
        except (KeyError, TypeError, ValueError):
            return None
        if not (0.0 <= share <= 1.0 and n_cpu > 0 and seconds >= 0.0):
            return None
        return cls(share=share, n_cpu=n_cpu, seconds=seconds)

    def line(self) -> str:
        return (f"machine: other processes kept {self.share:.0%} of the {self.n_cpu} CPUs busy "
                f"over the {self.seconds:,.0f} s measured (their CPU time, not tuner's); "
                "figures measured beside them are slower and noisier than this machine gives "
                "alone: tune on a quiet machine, or read them as such")


def _tick() -> float:
    return float(os.sysconf("SC_CLK_TCK"))


def _busy_s() -> float:
    first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    values = [int(v) for v in first[1:]]
    return sum(values[i] for i in _BUSY_FIELDS if i < len(values)) / _tick()


def _stat(pid: str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone meanwhile
        return None
    return text[text.rfind(")") + 2:].split()


def _running_descendants_s(root: int) -> float:
    """CPU time of every running descendant of ``root`` (with its own reaped children's)."""
    parent: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or (fields := _stat(entry)) is None:
            continue
        parent[int(entry)] = int(fields[_PPID])
        times[int(entry)] = sum(int(v) for v in fields[_TIMES]) / _tick()
    ours: set[int] = {root}
    grew = True
    while grew:
        new = {pid for pid, pp in parent.items() if pp in ours and pid not in ours}
        ours |= new
        grew = bool(new)
    return sum(times.get(pid, 0.0) for pid in ours - {root})


def snapshot() -> CpuSnapshot | None:
    """The machine's and tuner's CPU time now; None where /proc cannot be read."""
    try:
        busy = _busy_s()
        t = os.times()
        ours = (t.user + t.system + t.children_user + t.children_system
                + _running_descendants_s(os.getpid()))
    except (OSError, ValueError, IndexError):
        return None
    return CpuSnapshot(wall_s=time.monotonic(), busy_s=busy, ours_s=ours)


def others_since(start: CpuSnapshot | None) -> OtherLoad | None:
    """Other processes' share of all CPUs since ``start``; None without readings."""
    end = snapshot()
    n_cpu = os.cpu_count() or 1
    if start is None or end is None or end.wall_s - start.wall_s <= 0:
        return None
    seconds = end.wall_s - start.wall_s
    others = (end.busy_s - start.busy_s) - (end.ours_s - start.ours_s)
    return OtherLoad(share=min(1.0, max(0.0, others / (seconds * n_cpu))), n_cpu=n_cpu,
                     seconds=seconds)
