"""The worker's default CPU thread count: one per physical core, as llama.cpp counts them."""

from pathlib import Path

import pytest

from tuner.machine import cpus


def _topology(root: Path, siblings: list[str]) -> Path:
    for cpu, mask in enumerate(siblings):
        d = root / f"cpu{cpu}" / "topology"
        d.mkdir(parents=True)
        (d / "thread_siblings").write_text(mask + "\n")
    return root


def test_hyperthreads_share_a_core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus, "usable_cpus", lambda: [0, 1, 2, 3])
    root = _topology(tmp_path, ["3", "3", "c", "c"])  # cpus 0+1 and 2+3 share a core
    assert cpus.physical_cores(root) == 2


def test_one_thread_per_core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus, "usable_cpus", lambda: [0, 1, 2])
    assert cpus.physical_cores(_topology(tmp_path, ["1", "2", "4"])) == 3


def test_affinity_limits_the_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus, "usable_cpus", lambda: [2])
    assert cpus.physical_cores(_topology(tmp_path, ["1", "2", "4"])) == 1


def test_without_topology_half_the_cpus_above_four(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus, "usable_cpus", lambda: list(range(16)))
    assert cpus.physical_cores(tmp_path) == 8
    monkeypatch.setattr(cpus, "usable_cpus", lambda: [0, 1, 2])
    assert cpus.physical_cores(tmp_path) == 3


def test_this_machine_has_at_least_one() -> None:
    assert 1 <= cpus.default_threads() <= len(cpus.usable_cpus())
