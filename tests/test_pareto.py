"""The multi-objective mode (``tuner sweep --objective pareto``): the front's rule, its stop rule,
TPE fitted on prompt speed, generation speed and GPU memory with failed trials taught as the
worst, pruning refused, and a real CPU sweep whose printed front is exactly the stored trials
no other beats on both speeds (a CPU measures no GPU memory)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cli_run import one_line_error, tuner
from tests.records_factory import make_record
from tests.spaces import write_space
from tuner.errors import BadInput
from tuner.results.studystore import default_storage, require_study
from tuner.search.pareto import dominates, front, non_dominated, point_of, stagnation, usable_axes
from tuner.search.pruning import resolve
from tuner.search.sampler import Finished, TpeOrder
from tuner.specs import ContextSettings, ModelSettings, TrialSpec

ALL = [0, 1, 2]


def test_dominance_on_each_axis_direction() -> None:
    # (prompt t/s, generation t/s, GPU MiB): more speed, less memory is better.
    assert dominates((100.0, 10.0, 500.0), (90.0, 10.0, 600.0), ALL)
    assert not dominates((100.0, 10.0, 500.0), (100.0, 10.0, 500.0), ALL)  # equal: neither
    assert not dominates((100.0, 10.0, 700.0), (90.0, 9.0, 600.0), ALL)  # more memory
    # within a 5% slack a point counts as at least as good on every axis
    assert dominates((96.0, 9.6, 520.0), (100.0, 10.0, 500.0), ALL, slack=0.05)
    assert not dominates((94.0, 10.0, 500.0), (100.0, 10.0, 500.0), ALL, slack=0.05)


def test_front_keeps_each_trade_off_and_drops_the_beaten() -> None:
    points = {"fast-prompt": (200.0, 8.0, 900.0), "fast-gen": (120.0, 12.0, 900.0),
              "small": (100.0, 7.0, 300.0), "beaten": (110.0, 7.5, 950.0)}
    assert non_dominated(points) == ["fast-prompt", "fast-gen", "small"]


def test_an_axis_some_point_lacks_is_left_out() -> None:
    pts = [(100.0, 10.0, None), (90.0, 12.0, None)]  # a CPU: no GPU memory
    assert usable_axes(pts) == [0, 1]
    assert non_dominated(dict(enumerate(pts))) == [0, 1]
    assert usable_axes([]) == []


def test_front_of_records_is_its_usable_trials() -> None:
    recs = [make_record(0, request_s=1.0), make_record(1, request_s=0.8),
            make_record(2, request_s=1.2), make_record(3, request_s=0.5, verified=False)]
    # Same memory, speeds in proportion: the fastest verified trial beats the others on both.
    assert [r.number for r in front(recs)] == [1]
    assert point_of(recs[1])[2] == 1200.0  # the GPU memory axis, as measured


def test_stop_rule_counts_trials_since_the_front_gained() -> None:
    a, b = (100.0, 10.0, 500.0), (100.0, 12.0, 500.0)
    assert stagnation([a, b], 0.01) == 0  # b is a new trade-off
    assert stagnation([a, b, (99.5, 11.99, 501.0)], 0.01) == 1  # within 1% of b: no gain
    assert stagnation([a, None, None], 0.01) == 2  # failures gain nothing
    assert stagnation([a, None, None], 0.01, explore=3) == 0  # the random start never counts
    assert stagnation([a, (90.0, 9.0, 200.0)], 0.01) == 0  # less memory is a gain too


def plan() -> dict[str, TrialSpec]:
    cpu = ModelSettings(device="cpu", build="installed")
    specs = [TrialSpec(model=cpu, context=ContextSettings(n_batch=b, n_ubatch=u, n_threads=1))
             for b in (64, 128, 256, 512) for u in (32, 64) if u <= b]
    return {s.key(): s for s in specs}


def test_tpe_fits_the_pareto_axes_and_teaches_failures_as_the_worst() -> None:
    p = plan()
    keys = list(p)
    order = TpeOrder(p, seed=1, objective="pareto")
    history = [Finished(k, 0.1, (100.0 + i, 10.0 - i, None)) for i, k in enumerate(keys[:6])]
    history.append(Finished(keys[6], None, None))  # out of memory
    values = order._pareto_values(history)
    assert values[0] == [100.0, 10.0]  # the axes measured: prompt and generation speed
    assert values[-1] == [100.0 / 2.0, 5.0 / 2.0]  # the worst seen on each axis, made worse
    pick = order.pick(keys[7:], history)
    assert pick == keys[7]  # the only setting left open
    many = order.pick([k for k in keys if k not in keys[:3]], history[:3])
    assert many in keys[3:]


def test_pareto_never_prunes() -> None:
    assert resolve(None, "tpe", "pareto") is False
    assert resolve(None, "tpe", "request") is True
    with pytest.raises(BadInput, match="--prune compares request times"):
        resolve(True, "tpe", "pareto")


def test_prune_with_pareto_is_one_line(tiny_model: Path, tmp_path: Path) -> None:
    proc = tuner("sweep", "--model", tiny_model, "--device", "cpu", "--objective", "pareto",
                 "--prune", "--results", tmp_path / "r", "--out", tmp_path / "p.yaml")
    assert proc.returncode == 2
    assert "--prune compares request times" in one_line_error(proc)
    assert not (tmp_path / "r").exists()


def test_cpu_sweep_prints_the_stored_front(tiny_model: Path, tmp_path: Path) -> None:
    space = write_space(tmp_path / "s.yaml", n_batch=[16, 32, 64], n_ubatch=[16],
                        flash_attn=[False, True])
    proc = tuner("sweep", "--model", tiny_model, "--device", "cpu", "--space", space,
                 "--sampler", "tpe", "--objective", "pareto", "--prompt-tokens", 32,
                 "--gen-tokens", 4, "--repetitions", 1, "--warmup", 0, "--finalist-rounds", 0,
                 "--served-requests", 0, "--results", tmp_path / "r",
                 "--out", tmp_path / "p.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on prompt speed, generation speed and GPU memory" in proc.stderr
    assert "pruning" not in proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("Pareto front"))
    printed = [int(n) for n in re.findall(r"#(\d+) \(", line)]
    records = require_study(default_storage(tmp_path / "r")).records()
    assert all(r.state.value == "complete" for r in records)  # nothing pruned
    expected = non_dominated({r.number: point_of(r) for r in records if r.usable})
    assert sorted(printed) == sorted(expected) and printed
    assert "GPU MiB" not in line  # a CPU measures no GPU memory: the front is over the speeds
    # The report's overview lists the same front when it holds a trade-off.
    report = tuner("report", "--results", tmp_path / "r")
    assert report.returncode == 0, report.stderr
    if len(expected) > 1:
        rows = report.stdout.split("\npareto ", 1)[1].split("\n\n", 1)[0]
        assert sorted(int(n) for n in re.findall(r"#(\d+) installed", rows)) == sorted(expected)
    else:  # one trial beats all: no trade-off to show
        assert "\npareto " not in report.stdout


def test_the_overview_shows_a_trade_off_and_hides_a_single_best() -> None:
    from tuner.reports.overview import overview
    from tuner.reports.views import overview_view, render_text
    from tuner.results.records import Stat

    fast, lean, beaten = (make_record(n, request_s=1.0) for n in (0, 1, 2))
    m = lean.measurement
    lean = lean.model_copy(update={"measurement": m.model_copy(update={
        "tg_tps": Stat.of([x * 2 for x in m.tg_tps.samples]),  # faster generation
        "pp_tps": Stat.of([x / 2 for x in m.pp_tps.samples])})})  # slower prompt
    m = beaten.measurement
    beaten = beaten.model_copy(update={"measurement": m.model_copy(update={
        "pp_tps": Stat.of([x / 3 for x in m.pp_tps.samples])})})
    ov = overview("s", [fast, lean, beaten])
    assert [p.trial for p in ov.front] == [0, 1]  # fastest prompt first; #2 beaten by #0
    text = render_text(overview_view(ov))
    rows = text.split("\npareto ", 1)[1].split("\n\n", 1)[0]
    assert re.findall(r"#(\d+) installed", rows) == ["0", "1"], rows
    single = overview("s", [fast, beaten])
    assert single.front == [] and "\npareto " not in render_text(overview_view(single))
