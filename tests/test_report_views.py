"""`tuner report` views and exports rendered from the stored results of a real CPU sweep (plus
TEST DATA finalist, drift and throttle records derived from it, see tests/report_data.py) and
of the real H200 study in docs/benchmarks/."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_run import REPO, one_line_error, tuner
from tests.report_data import enriched_copy, exported, h200_results
from tuner.reports.analysis import effects, importance, pareto, ranked_frame
from tuner.reports.overview import overview
from tuner.reports.views import secs
from tuner.results.studystore import default_storage, records_of

WIDTH = 100


def lines_fit(text: str, width: int = WIDTH) -> None:
    too_wide = [ln for ln in text.splitlines() if len(ln.rstrip()) > width]
    assert not too_wide, too_wide


@pytest.fixture(scope="module")
def sweep(cpu_sweep: dict) -> dict:
    assert cpu_sweep["proc"].returncode == 0, cpu_sweep["proc"].stderr[-3000:]
    records = records_of(default_storage(cpu_sweep["results"]), cpu_sweep["study"])
    assert len(records) == 4 and all(r.usable for r in records), [r.verification for r in records]
    return {**cpu_sweep, "records": records}


@pytest.fixture(scope="module")
def enriched(sweep: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return enriched_copy(sweep, tmp_path_factory.mktemp("enriched"))


@pytest.fixture(scope="module")
def h200(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return h200_results(tmp_path_factory.mktemp("h200") / "results")


def test_default_view_answers_within_100_columns(sweep: dict) -> None:
    proc = tuner("report", "--results", sweep["results"])
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    lines_fit(text)
    best = min(sweep["records"], key=lambda r: r.objective)
    base = next(r for r in sweep["records"] if r.number == 0)  # the defaults run first
    assert f"#{best.number} {best.spec.label()}" in text
    assert "not re-measured (no finalist report)" in text
    assert "verified    yes: " in text and best.verification.summary in text
    assert "runner-up" in text and "the winner's time" in text
    assert f"#{base.number} {base.spec.label()} (llama-cpp-python's defaults)" in text
    assert f"{base.objective / best.objective:.2f}x as fast" in text
    assert "effect of each setting" in text
    for setting in ("n_ubatch", "flash_attn", "kv_cache"):
        assert setting in text
    assert "no peak known" in text  # a CPU study: no roofline share without given peaks


def test_effects_are_the_best_at_each_value(sweep: dict) -> None:
    """The effects agree with a plain computation over the records, and the variance shares
    with pandas' group means (how they were computed before pandas left the terminal report)."""
    records = sweep["records"]
    rows = effects(records)
    assert {e.setting for e in rows} == {"n_ubatch", "flash_attn", "kv_cache"}
    for e in rows:
        picked = [r for r in records if _value(r, e.setting) == e.value]
        assert e.trials == len(picked)
        assert e.best_s == pytest.approx(min(r.objective for r in picked))
        assert e.worst_s == pytest.approx(max(r.objective for r in picked))
        best = min(picked, key=lambda r: r.objective)
        assert e.best_trial == best.number
        m = best.measurement.request_seconds
        assert e.best_rep_spread_pct == pytest.approx((m.max - m.min) / m.median * 100)
    for setting in ("n_ubatch", "flash_attn", "kv_cache"):
        group = [e for e in rows if e.setting == setting]
        assert group[0].vs_best == 1.0 and all(g.vs_best >= 1.0 for g in group)
    shares = importance(records)
    assert set(shares) == {"n_ubatch", "flash_attn", "kv_cache"}
    assert all(0.0 <= s <= 1.0 for s in shares.values())
    df = ranked_frame(records)
    y = df["request_s"].map(math.log)
    for setting, share in shares.items():
        means = y.groupby(df[setting]).transform("mean")
        assert share == pytest.approx(float(((means - y.mean()) ** 2).sum())
                                      / float(((y - y.mean()) ** 2).sum()))
    front = pareto(records)
    assert 1 <= len(front) <= len(records)
    fastest_pp = max(records, key=lambda r: r.measurement.pp_tps.median).number
    assert fastest_pp in set(front["trial"])  # nothing beats the fastest prompt on prompt


def _value(r, setting: str) -> str:
    c = r.spec.context
    return {"n_ubatch": str(c.n_ubatch), "flash_attn": "on" if c.flash_attn else "off",
            "kv_cache": c.type_k if c.type_k == c.type_v else f"{c.type_k}/{c.type_v}"}[setting]


def test_trials_view_keeps_every_column_that_matters_within_100(sweep: dict) -> None:
    proc = tuner("report", "--results", sweep["results"], "--format", "trials")
    assert proc.returncode == 0, proc.stderr
    lines_fit(proc.stdout)
    header = next(ln for ln in proc.stdout.splitlines() if "req s" in ln)
    for col in ("#", "b/ub", "fa", "kv", "pp t/s", "tg t/s", "req s", "ok"):
        assert col in header
    for r in sweep["records"]:
        assert f"{r.objective:.4f}" in proc.stdout  # the request time is never cut off
    # the fixture's sweep runs one thread (tests/report_data.py)
    assert "every trial: build installed, ngl 0, thr 1" in proc.stdout


def test_table_to_a_file_is_the_terminal_text(sweep: dict, tmp_path: Path) -> None:
    for fmt in ("table", "trials"):
        target = tmp_path / f"{fmt}.txt"
        proc = tuner("report", "--results", sweep["results"], "--format", fmt, "-o", target)
        assert proc.returncode == 0 and f"wrote {target}" in proc.stdout
        shown = tuner("report", "--results", sweep["results"], "--format", fmt).stdout
        written = target.read_text()
        assert "|---" not in written and "| " not in written  # not Markdown
        assert [ln.rstrip() for ln in written.splitlines()] == \
               [ln.rstrip() for ln in shown.splitlines()]
        lines_fit(written)


def test_exports_parse_back(sweep: dict, tmp_path: Path) -> None:
    results = sweep["results"]
    data = json.loads(tuner("report", "--results", results, "--format", "json").stdout)
    assert len(data) == 4 and {d["study"] for d in data} == {sweep["study"]}
    assert [d["request_s"] for d in data] == sorted(d["request_s"] for d in data)
    rows = list(csv.DictReader(io.StringIO(
        tuner("report", "--results", results, "--format", "csv").stdout)))
    assert [int(r["trial"]) for r in rows] == [d["trial"] for d in data]
    out = tmp_path / "r.md"
    assert tuner("report", "--results", results, "--format", "md", "-o", out).returncode == 0
    md = out.read_text().splitlines()
    assert md[0].startswith("| study | rank | trial |") and len(md) == 2 + 4


def test_output_to_a_missing_folder_or_onto_a_folder(sweep: dict, tmp_path: Path) -> None:
    for target, words in ((tmp_path / "no" / "r.html", "does not exist"),
                          (tmp_path, "is a directory")):
        for fmt in ("table", "html", "csv"):
            proc = tuner("report", "--results", sweep["results"], "--format", fmt, "-o", target)
            assert proc.returncode == 2, proc.stderr
            assert words in one_line_error(proc)
    assert not (tmp_path / "no").exists()


def test_finalists_drift_and_throttle_are_shown(enriched: dict) -> None:
    fin = enriched["finalists"]
    proc = tuner("report", "--results", enriched["results"])
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    lines_fit(text)
    winner = next(f for f in fin.finalists if f.trial == fin.winner_trial)
    assert f"#{winner.trial} {winner.label}" in text
    assert "95% interval, 3 fresh workers, 9 samples" in text
    assert "re-measured with 3 finalists in fresh workers" in text
    # The search's leaders over processes: every confirmed trial with its process count.
    flat = " ".join(text.split())
    assert "the search's leaders over processes" in flat
    for c in fin.confirmed:
        assert f"#{c.trial} {c.label} 3 {secs(c.request_seconds.median)} " in flat
    assert "tie" in text and "uses less memory" in " ".join(text.split())
    flat = " ".join(text.split())
    assert f"#{enriched['drifted']} " in flat and "worker w-test-1 drifted" in flat
    assert "throttled: HW_SLOWDOWN" in flat
    trials = tuner("report", "--results", enriched["results"], "--format", "trials").stdout
    lines_fit(trials)
    flat = " ".join(trials.split())
    assert "unstable: worker w-test-1 drifted over its life (pp -20%" in flat
    assert "throttled: HW_SLOWDOWN" in flat
    rows = json.loads(tuner("report", "--results", enriched["results"], "--format",
                            "json").stdout)
    why = {r["trial"]: r["why"] for r in rows}
    assert "worker w-test-1 drifted" in why[enriched["drifted"]]
    assert why[enriched["throttled"]].count("throttled: HW_SLOWDOWN") == 1


def test_overview_without_finalists_uses_repetition_ranges(sweep: dict) -> None:
    ov = overview(sweep["study"], sweep["records"])
    best = min(sweep["records"], key=lambda r: r.objective)
    assert ov.winner.trial == best.number and not ov.winner.remeasured
    m = best.measurement.request_seconds
    assert (ov.winner.request_s.low, ov.winner.request_s.high) == (m.min, m.max)
    second = sorted(sweep["records"], key=lambda r: r.objective)[1]
    assert ov.gap.value == pytest.approx(second.objective / best.objective)
    assert ov.gap_beyond_noise == (second.measurement.request_seconds.min > m.max)


def test_h200_study_view(h200: dict) -> None:
    """The real GPU study: the gain over the stock defaults is the one docs/benchmarks.md
    states (request time 22.2% shorter, prompt 2.45x), and the roofline share is shown."""
    proc = tuner("report", "--results", h200["results"])
    assert proc.returncode == 0, proc.stderr
    lines_fit(proc.stdout)
    flat = " ".join(proc.stdout.split())
    assert "#22 force-cublas b2048/u2048 fa kv f16/f16 ngl -1" in flat
    assert "(22.2% less time per request), prompt 2.45x" in flat
    assert "% of 4,800 GB/s (H200 SXM)" in flat
    assert "parameters unavailable" in flat  # the model file is not on this machine
    trials = tuner("report", "--results", h200["results"], "--format", "trials")
    lines_fit(trials.stdout)
    assert trials.stdout.count(" yes") >= 36


def test_compare_two_studies(sweep: dict, enriched: dict, h200: dict, tmp_path: Path) -> None:
    theirs = exported(enriched["results"], enriched["study"], tmp_path / "enriched.jsonl")
    ours = exported(sweep["results"], sweep["study"], tmp_path / "cpu.jsonl")
    same = tuner("report", "--results", sweep["results"], "--compare", sweep["study"], theirs)
    assert same.returncode == 0, same.stderr
    lines_fit(same.stdout)
    assert "B/A" in same.stdout and "beyond" in same.stdout
    data = json.loads(tuner("report", "--results", sweep["results"], "--format", "json",
                            "--compare", sweep["study"], theirs).stdout)
    matched = [r for r in data if r["what"] == "request s"]
    assert len(matched) == 4
    for r in matched:  # the same records on both sides (one re-stored as throttled)
        assert r["b_over_a"] == pytest.approx(1.0, abs=1e-3) and r["beyond_noise"] == "no"
    cross = tuner("report", "--results", h200["results"], "--format", "json", "--compare",
                  h200["study"], ours)
    rows = json.loads(cross.stdout)
    assert rows[0]["what"] == "winner request s" and rows[0]["beyond_noise"] == "yes"
    assert rows[0]["b_over_a"] == pytest.approx(rows[0]["b"] / rows[0]["a"], rel=1e-2)
    as_csv = tuner("report", "--results", h200["results"], "--format", "csv", "--compare",
                   h200["study"], ours).stdout
    assert list(csv.DictReader(io.StringIO(as_csv)))[0]["beyond_noise"] == "yes"
    missing = tuner("report", "--results", sweep["results"], "--compare", sweep["study"], "nope")
    assert missing.returncode == 2 and "no study 'nope'" in one_line_error(missing)


def test_report_does_not_import_its_exporters() -> None:
    code = ("import sys, tuner.reports.rows; assert 'tuner.reports.exporters' not in sys.modules; "
            "import tuner.reports.exporters")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_terminal_overview_is_computed_without_pandas() -> None:
    """pandas costs a report more CPU to import than the rest of it: only a frame needs it."""
    code = ("import sys\n"
            "from tests.records_factory import make_record\n"
            "from tuner.reports.overview import overview\n"
            "rs = [make_record(i, request_s=1.0 + i / 10, n_batch=512 * i) for i in (1, 2, 3)]\n"
            "assert overview('s', rs).effects\n"
            "assert 'pandas' not in sys.modules, 'pandas imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


def test_cli_offers_every_format() -> None:
    from tuner.cli import report
    from tuner.reports.reporting import FORMATS

    fmt = next(p for p in report.params if p.name == "fmt")
    assert tuple(fmt.type.choices) == FORMATS


def test_a_study_where_nothing_was_verified() -> None:
    """TEST DATA records (tests/records_factory.py): every view still renders and says why."""
    from tests.records_factory import make_record
    from tuner.reports.htmlreport import study_html
    from tuner.reports.rows import rows
    from tuner.reports.views import overview_view, render_text, trials_view
    from tuner.results.records import TrialState

    recs = [make_record(0, state=TrialState.INFEASIBLE),
            make_record(1, request_s=1.0, verified=False, reason="2 of 31 layers on CPU"),
            make_record(2, request_s=1.2, verified=False, reason="2 of 31 layers on CPU",
                        n_batch=1024)]
    ov = overview("test-study", recs)
    assert ov.winner is None
    assert ov.no_winner_reason == ("no trial verified; most often: 2 of 31 layers on CPU "
                                   "(2 of 2 measured)")
    text = render_text(overview_view(ov))
    lines_fit(text)
    assert "winner      none: no trial verified" in text
    lines_fit(render_text(trials_view(rows(recs))))
    html = study_html(ov, recs, rows(recs), None, None, [])
    assert "none: no trial verified" in html and html.count("<svg") == 6
    empty = overview("test-study", [make_record(0, state=TrialState.CRASHED)])
    assert empty.no_winner_reason == "no trial measured (1 crashed)" and empty.effects == []
