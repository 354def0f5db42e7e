"""Counts kept by the fault-injection tests and printed at the end of the test session
(tests/conftest.py): for each case, how many runs, how many parent crashes, how many trials
lost. The tests assert the last two are zero; the summary shows the evidence."""

from __future__ import annotations

from collections import defaultdict

TALLY: dict[str, dict[str, int]] = defaultdict(lambda: {"runs": 0, "parent_crashes": 0,
                                                        "lost_trials": 0})


def record(case: str, parent_crashed: bool, lost: int) -> None:
    t = TALLY[case]
    t["runs"] += 1
    t["parent_crashes"] += int(parent_crashed)
    t["lost_trials"] += lost


def lines() -> list[str]:
    if not TALLY:
        return []
    out = [f"{'fault case':<28} {'runs':>5} {'parent crashes':>15} {'lost trials':>12}"]
    for case, t in sorted(TALLY.items()):
        out.append(f"{case:<28} {t['runs']:>5} {t['parent_crashes']:>15} {t['lost_trials']:>12}")
    total = {k: sum(t[k] for t in TALLY.values()) for k in ("runs", "parent_crashes",
                                                            "lost_trials")}
    out.append(f"{'total':<28} {total['runs']:>5} {total['parent_crashes']:>15} "
               f"{total['lost_trials']:>12}")
    return out
