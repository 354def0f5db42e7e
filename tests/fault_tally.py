"""Counts kept by the fault-injection and race tests and printed at the end of the test session
(tests/conftest.py): for each case, how many runs, how many parent crashes, how many trials
lost, how many run twice. The tests assert the last three are zero; the summary shows the
evidence."""

from __future__ import annotations

from collections import defaultdict

COLUMNS = ("runs", "parent_crashes", "lost_trials", "duplicates")
TALLY: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COLUMNS, 0))


def record(case: str, parent_crashed: bool, lost: int) -> None:
    t = TALLY[case]
    t["runs"] += 1
    t["parent_crashes"] += int(parent_crashed)
    t["lost_trials"] += lost


def record_duplicates(case: str, duplicates: int) -> None:
    """Trials run more than once in a run already counted by record()."""
    TALLY[case]["duplicates"] += duplicates


def merge(other: dict[str, dict[str, int]]) -> None:
    """Add another process's tally (an xdist worker's) to this one."""
    for case, counts in other.items():
        for k in COLUMNS:
            TALLY[case][k] += counts.get(k, 0)


def lines() -> list[str]:
    if not TALLY:
        return []
    out = [f"{'fault case':<28} {'runs':>5} {'parent crashes':>15} {'lost trials':>12} "
           f"{'duplicates':>11}"]
    rows = sorted(TALLY.items())
    rows.append(("total", {k: sum(t[k] for t in TALLY.values()) for k in COLUMNS}))
    for case, t in rows:
        out.append(f"{case:<28} {t['runs']:>5} {t['parent_crashes']:>15} "
                   f"{t['lost_trials']:>12} {t['duplicates']:>11}")
    return out
