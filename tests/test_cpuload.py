"""Other processes' CPU time while tuner measures (tuner/machine/cpuload.py), read from the real
/proc of this machine: a process outside tuner's tree counts as another's load, tuner's own
children as tuner's; and a sweep's result says so in one line when others kept the CPUs busy."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from tuner.machine import cpuload
from tuner.reports.render import print_sweep_result
from tuner.sweep.result import SweepResult

BURN = "import time, sys\nt = time.time()\nwhile time.time() - t < float(sys.argv[1]): pass\n"
CPU_BURN = BURN.replace("time.time()", "time.process_time()")  # seconds of CPU, not of wall


def _burn_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:13]) / os.sysconf("SC_CLK_TCK")


def test_a_childs_cpu_time_is_tuners_own() -> None:
    """A child that burns 1 s of CPU (however long that takes beside other processes): its
    time while it runs, and once reaped, is tuner's own, not another's."""
    start = cpuload.snapshot()
    assert start is not None
    child = subprocess.Popen([sys.executable, "-c", CPU_BURN, "1.0"])
    deadline = time.monotonic() + 60
    while (burnt := _burn_s(child.pid)) < 0.3 and time.monotonic() < deadline:
        time.sleep(0.05)
    middle = cpuload.snapshot()  # the running descendant's time read after ``burnt``
    child.wait()
    end = cpuload.snapshot()
    assert middle is not None and end is not None and burnt >= 0.3
    assert middle.ours_s - start.ours_s >= burnt - 0.02
    assert end.ours_s - start.ours_s >= 1.0 - 0.02  # reaped: in the children's times


def test_processes_outside_tuners_tree_are_others(tmp_path: Path) -> None:
    """Hogs started in a session of their own (their parent exits at once: not descendants)
    on every CPU for 2 s: at least 40% of all CPUs are others' (hogs sharing the CPUs with
    this test run's other processes, which are others too). At nice 19, so that tests running
    beside this one keep their CPUs (a clean-clone CI run's timing-sensitive pruning test
    failed beside full-priority hogs)."""
    n = min(os.cpu_count() or 1, 8)
    start = cpuload.snapshot()
    subprocess.run(["bash", "-c", f'for i in $(seq {n}); do setsid nice -n 19 "{sys.executable}" '
                    f'-c "$0" 2 < /dev/null > /dev/null 2>&1 & done', BURN], check=True)
    time.sleep(2.0)
    load = cpuload.others_since(start)
    assert load is not None and load.n_cpu == (os.cpu_count() or 1)
    assert load.share >= 0.4 * n / load.n_cpu, load
    if load.n_cpu <= 8:
        assert load.noted and "other processes kept" in load.line()


@pytest.mark.parametrize("share", [0.63, 0.05])
def test_a_sweep_says_when_others_kept_the_cpus_busy(share: float) -> None:
    result = SweepResult(study="s", ran=[], records=[], best=None, written=None,
                         no_config_reason="no completed trial", storage="sqlite://",
                         others=cpuload.OtherLoad(share=share, n_cpu=2, seconds=120.0))
    out = io.StringIO()
    with redirect_stdout(out):
        print_sweep_result(Path("."), result)
    said = "machine: other processes kept 63% of the 2 CPUs busy over the 120 s measured"
    assert (said in out.getvalue()) == (share >= cpuload.NOTED_SHARE), out.getvalue()


@pytest.mark.parametrize("share", [0.63, 0.05])
def test_the_report_says_it_from_the_stored_decision(share: float) -> None:
    """TEST DATA records (tests/records_factory.py): the study's decision, stored as JSON and
    read back, keeps the share, and `tuner report`'s overview warns from 15%."""
    from tests.records_factory import make_record
    from tuner.reports.overview import overview
    from tuner.results.records import FinalistReport

    report = FinalistReport(study="s", finalists=[], winner_trial=0, leader_trial=0, tie=False,
                            reason="only one", measured_at="2026-12-05T00:00:00+00:00",
                            machine_load=cpuload.OtherLoad(share=share, n_cpu=2, seconds=90.0))
    back = FinalistReport.model_validate_json(report.model_dump_json())
    assert back.machine_load == report.machine_load
    ov = overview("s", [make_record(0)], finalists=back)
    said = "machine: other processes kept 63% of the 2 CPUs busy over the 90 s measured"
    assert any(said in w for w in ov.warnings) == (share >= cpuload.NOTED_SHARE), ov.warnings
