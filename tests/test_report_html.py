"""The HTML report: one self-contained file, rendered from a real CPU sweep and from the real
H200 study, opened in a real headless Chromium with no console errors and no request beyond
the file itself."""

from __future__ import annotations

import re
from html import escape
from pathlib import Path

import pytest

from scripts.headless import chromium, page_of
from tests.cli_run import tuner
from tests.report_data import enriched_copy, exported, h200_results

SECTIONS = ("The answer", "Roofline", "Effect of each setting", "Charts", "Finalists",
            "Warnings", "Worker drift", "Placement proof of the winner", "Environment",
            "Every trial")


@pytest.fixture(scope="module", autouse=True)
def need_chromium() -> None:
    if chromium() is None:
        pytest.fail("chromium is not installed: apt-get update && apt-get install -y chromium")


def self_contained(html: str) -> None:
    assert html.startswith("<!DOCTYPE html>")
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "url(http" not in html


def assert_opens_cleanly(path: Path, shot: Path) -> None:
    run = page_of(path)
    assert run.errors == [], run.errors
    assert run.console == [], run.console
    assert run.requests and run.requests[0] == path.resolve().as_uri()
    assert all(u.startswith(("file:", "data:")) for u in run.requests), run.requests
    assert run.screenshot.startswith(b"\x89PNG") and len(run.screenshot) > 50_000
    shot.write_bytes(run.screenshot)


def test_the_browser_check_catches_errors(tmp_path: Path) -> None:
    """The harness sees what a broken page does (so a clean run means something)."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><title>t</title></head><body>'
                   '<img src="missing.png"><script>console.error("boom"); nope();</script>'
                   "</body></html>")
    run = page_of(bad)
    assert "console.error: boom" in run.errors
    assert any("nope is not defined" in e for e in run.errors)
    assert any("missing.png" in e or "ERR_FILE_NOT_FOUND" in e for e in run.errors)


def test_html_report_of_the_cpu_sweep(cpu_sweep: dict, tmp_path: Path) -> None:
    enriched = enriched_copy(cpu_sweep, tmp_path)
    for name, results in (("plain", cpu_sweep["results"]), ("enriched", enriched["results"])):
        out = tmp_path / f"{name}.html"
        proc = tuner("report", "--results", results, "--format", "html", "-o", out,
                     "--peak-bandwidth-gbs", 50, "--peak-tflops", 2)
        assert proc.returncode == 0, proc.stderr
        html = out.read_text()
        self_contained(html)
        for section in SECTIONS:
            assert f"<h2>{section}</h2>" in html
        assert html.count("<svg") == 6  # ubatch, KV, flash attention, Pareto, importance, history
        assert "--peak-bandwidth-gbs 50" in html and "GB/s" in html
        assert_opens_cleanly(out, tmp_path / f"{name}.png")
    html = (tmp_path / "enriched.html").read_text()
    assert "95% interval, 3 fresh workers" in html and "w-test-1" in html
    assert "The finalists were chosen on these medians" in html
    # One row per confirmed trial: its process count, and whether it became a finalist.
    fin = enriched["finalists"]
    finals = {f.trial for f in fin.finalists}
    assert fin.confirmed and any(c.trial not in finals for c in fin.confirmed)
    for c in fin.confirmed:
        row = html.index(f'<td class="n">{c.trial}</td><td>{escape(c.label)}</td><td class="n">3</td>')
        end = html.index("</tr>", row)
        assert html[row:end].endswith(f"<td>yes</td><td>{'yes' if c.trial in finals else ''}</td>")
    assert "throttled: HW_SLOWDOWN" in html


def test_html_report_of_the_h200_study(tmp_path: Path) -> None:
    h200 = h200_results(tmp_path / "results")
    out = tmp_path / "h200.html"
    proc = tuner("report", "--results", h200["results"], "--format", "html", "-o", out)
    assert proc.returncode == 0, proc.stderr
    html = out.read_text()
    self_contained(html)
    assert "NVIDIA H200" in html and "33 on CUDA0" in html and "(33/33 offloaded)" in html
    assert "NVIDIA H200 datasheet" in html  # the peak's source is named on the page
    assert_opens_cleanly(out, tmp_path / "h200.png")


def test_html_of_several_studies_asks_for_one(cpu_sweep: dict, tmp_path: Path) -> None:
    two = tmp_path / "results"
    h200_results(two)
    enriched_copy(cpu_sweep, tmp_path)  # a second study in the same results folder
    proc = tuner("report", "--results", two, "--format", "html")
    assert proc.returncode == 2 and "--study" in proc.stderr


def test_compare_as_html(cpu_sweep: dict, tmp_path: Path) -> None:
    h200 = h200_results(tmp_path / "results")
    out = tmp_path / "cmp.html"
    proc = tuner("report", "--results", h200["results"], "--format", "html", "-o", out,
                 "--compare", h200["study"],
                 exported(cpu_sweep["results"], cpu_sweep["study"], tmp_path / "cpu.jsonl"))
    assert proc.returncode == 0, proc.stderr
    html = out.read_text()
    self_contained(html)
    assert "winner request s" in html
    run = page_of(out)
    assert run.errors == [] and run.console == []
