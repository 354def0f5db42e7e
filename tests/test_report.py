"""Report rows from stored records and their exporters."""

from __future__ import annotations

import csv
import io
import json

import pytest

from tests.records_factory import make_record
from tuner.errors import BadInput
from tuner.reports.exporters import EXPORTERS, FORMATS, exporter
from tuner.reports.rows import COLUMNS, rows, summary
from tuner.results.records import TrialState


def sample_records():
    """A sweep's worth: a baseline, two faster usable trials, an unproven one, an unstable one,
    and one trial per failure state; deliberately out of order."""
    return [
        make_record(6, state=TrialState.CRASHED, flash_attn=True, type_k="q4_0", type_v="q4_0"),
        make_record(3, request_s=0.9, verified=False, reason="3 of 31 layers on CPU",
                    n_batch=2048, n_ubatch=512),
        make_record(0, request_s=2.0),  # the baseline: 512/512, no FA, f16/f16
        make_record(2, request_s=0.5, n_batch=2048, n_ubatch=2048, flash_attn=True),
        make_record(5, state=TrialState.INFEASIBLE, n_batch=4096, n_ubatch=4096),
        make_record(1, request_s=1.0, n_batch=1024, n_ubatch=512, flash_attn=True,
                    type_k="q8_0", type_v="q8_0"),
        make_record(4, request_s=1.5, spread=0.3, n_batch=1024, n_ubatch=1024),
        make_record(7, state=TrialState.TIMEOUT, n_batch=1024, n_ubatch=256),
    ]


def test_usable_first_by_objective_then_unproven_then_the_rest_by_number() -> None:
    out = rows(sample_records())
    assert [r["trial"] for r in out] == [2, 1, 4, 0, 3, 5, 6, 7]
    assert [r["rank"] for r in out] == [1, 2, 3, 4, None, None, None, None]
    assert [r["state"] for r in out[-3:]] == ["infeasible", "crashed", "timeout"]
    assert [r["verified"] for r in out] == ["yes"] * 4 + ["no"] * 4


def test_columns_and_cells() -> None:
    out = rows(sample_records())
    assert list(out[0]) == [*COLUMNS[:15], "speedup_vs_baseline", *COLUMNS[15:]]
    best = out[0]
    assert (best["fa"], best["kv"], best["n_batch"], best["threads"]) == ("on", "f16/f16", 2048,
                                                                          "auto")
    assert best["request_s"] == pytest.approx(0.5)
    assert best["speedup_vs_baseline"] == pytest.approx(4.0)  # 2.0 s baseline / 0.5 s
    assert best["pp_spread_pct"] == pytest.approx(2.0, abs=0.1)
    assert best["pp_tps"] == pytest.approx(256 / 0.1, rel=1e-3)
    by_trial = {r["trial"]: r for r in out}
    assert by_trial[0]["speedup_vs_baseline"] == pytest.approx(1.0)
    assert by_trial[1]["kv"] == "q8_0/q8_0"
    assert by_trial[6]["pp_tps"] is None and by_trial[6]["speedup_vs_baseline"] is None


def test_rows_say_why_a_trial_is_not_usable() -> None:
    by_trial = {r["trial"]: r for r in rows(sample_records())}
    assert by_trial[3]["why"] == "3 of 31 layers on CPU"
    assert by_trial[5]["why"].startswith("cudaMalloc failed: out of memory")
    assert by_trial[6]["why"] == "worker died: SIGABRT"  # first line of the error only
    assert by_trial[4]["why"].startswith("unstable")
    assert by_trial[2]["why"] == ""


def test_rows_say_which_trials_were_measured_beside_a_compile() -> None:
    beside = make_record(1, request_s=1.0).model_copy(update={"alongside_build": ["force-cublas"]})
    (row_,) = rows([beside])
    assert row_["why"] == ("measured beside the force-cublas compile: a nomination, its leaders "
                           "measured again after it")


def test_no_speedup_column_without_a_baseline() -> None:
    out = rows([make_record(1, request_s=1.0, n_batch=1024), make_record(2, n_batch=2048)])
    assert "speedup_vs_baseline" not in out[0]
    # A baseline on another build does not count for this one.
    out = rows([make_record(1, request_s=1.0, n_batch=1024),
                make_record(0, request_s=2.0, build="cuda-fa-all")])
    assert {r["trial"]: r["speedup_vs_baseline"] for r in out} == {0: 1.0, 1: None}


def test_the_host_column_appears_when_trials_ran_on_several_hosts_or_gpus() -> None:
    """A study shared through one storage: each row says which host and GPUs measured it."""
    one = [make_record(1, request_s=1.0, n_batch=1024), make_record(2, n_batch=2048)]
    assert "ran_on" not in rows(one)[0]  # one host: no column
    env = one[0].environment
    assert env is not None
    other = make_record(3, request_s=0.8, n_batch=512).model_copy(update={
        "environment": env.model_copy(update={"hostname": "gpu-b", "cuda_visible_devices": "1"})})
    out = rows([*one, other])
    assert list(out[0])[:3] == ["rank", "trial", "ran_on"]
    assert {r["trial"]: r["ran_on"] for r in out} == {1: "test-host", 2: "test-host",
                                                      3: "gpu-b gpu 1"}


def test_csv_parses_back() -> None:
    out = rows(sample_records())
    parsed = list(csv.DictReader(io.StringIO(EXPORTERS["csv"].render(out))))
    assert len(parsed) == len(out)
    assert [int(r["trial"]) for r in parsed] == [r["trial"] for r in out]
    assert parsed[0]["fa"] == "on" and float(parsed[0]["request_s"]) == out[0]["request_s"]
    assert parsed[-1]["rank"] == "" and parsed[-1]["state"] == "timeout"
    # Extra leading columns (the CLI prefixes the study name) go through as they are.
    studied = list(csv.reader(io.StringIO(EXPORTERS["csv"].render([{"study": "s1", **r} for r in out]))))
    assert studied[0][:2] == ["study", "rank"] and studied[1][:2] == ["s1", "1"]


def test_json_parses_back() -> None:
    out = rows(sample_records())
    assert json.loads(EXPORTERS["json"].render(out)) == out


def test_markdown_has_a_header_and_one_line_per_row() -> None:
    out = rows(sample_records())
    lines = EXPORTERS["md"].render(out).splitlines()
    assert lines[0].startswith("| rank | trial | build |")
    assert set(lines[1]) <= set("|-:") and lines[1].count("|") == len(out[0]) + 1
    assert len(lines) == 2 + len(out)
    for line, r in zip(lines[2:], out):
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert len(cells) == len(r)
        assert cells[1] == str(r["trial"])
    assert "| 3 of 31 layers on CPU |" in lines[2 + 4]


def test_markdown_escapes_pipes() -> None:
    out = rows([make_record(1, verified=False, reason="layer|split")])
    assert "layer\\|split" in EXPORTERS["md"].render(out)


def test_unknown_format_is_bad_input() -> None:
    with pytest.raises(BadInput, match="unknown report format 'xlsx'") as err:
        exporter("xlsx")
    assert "\n" not in str(err.value) and err.value.exit_code == 2
    assert FORMATS == ("table", "trials", "md", "csv", "json", "html", "jsonl")


def test_empty_store_renders_headers_only() -> None:
    assert rows([]) == []
    assert EXPORTERS["csv"].render([]).strip() == ",".join(COLUMNS)
    assert json.loads(EXPORTERS["json"].render([])) == []
    assert len(EXPORTERS["md"].render([]).splitlines()) == 2


def test_summary() -> None:
    s = summary(sample_records())
    assert s["total"] == 8
    assert s["states"] == {"complete": 5, "infeasible": 1, "crashed": 1, "timeout": 1,
                           "failed": 0, "pruned": 0}
    assert (s["verified"], s["usable"]) == (4, 4)
    assert s["best"]["trial"] == 2 and s["best"]["request_s"] == pytest.approx(0.5)
    assert s["best"]["speedup_vs_baseline"] == pytest.approx(4.0)
    assert summary([make_record(1, verified=False)])["best"] is None
