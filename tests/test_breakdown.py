"""Where each millisecond of a served token goes, on real components: SmolLM2 and a model of an
unusual vocabulary loaded by llama_cpp.server's own loader in a spawned process, every
in-process stage timed, the HTTP stage from served figures taken through a real
llama_cpp.server; the sampling the server's request model defaults to; the shares; older
records without the new fields still load; the reports show it (terminal lines, markdown, JSON,
a stacked bar in the HTML page)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner.deploy.breakdown import http_stage, measure_breakdown
from tuner.deploy.servedmeasure import measure_served
from tuner.errors import BadInput
from tuner.models.modelgen import SHAPES, numbered_pieces, write_llama
from tuner.reports.breakdowntext import breakdown_json, breakdown_md
from tuner.results.breakdown import Stage, TokenBreakdown
from tuner.results.records import FinalistReport, ServedFigures, Stat
from tuner.specs import ContextSettings, ModelSettings, TrialSpec, Workload

CPU_SPEC = TrialSpec(model=ModelSettings(device="cpu"),
                     context=ContextSettings(n_batch=32, n_ubatch=32, n_threads=1))
WORKLOAD = Workload(prompt_tokens=32, gen_tokens=8, n_ctx=64)
IN_PROCESS = ["raw", "eval", "sample", "bias", "completion"]


def breakdown_of(ms: dict[str, list[float]], errors: dict[str, str] | None = None,
                 ) -> TokenBreakdown:
    stages = [Stage(key=k, ms_per_token=Stat.of(v)) for k, v in ms.items()]  # type: ignore[arg-type]
    stages += [Stage(key=k, error=e) for k, e in (errors or {}).items()]  # type: ignore[arg-type]
    return TokenBreakdown(trial=3, spec_key="k", label="x", prompt_tokens=2048, gen_tokens=128,
                          warmup=1, repetitions=3, stages=stages, measured_at="now")


def test_shares_are_what_each_stage_adds_over_the_served_token() -> None:
    # The H200 probe of a 7B model: 3.65, 4.19, 5.14, 5.10, 5.83 ms per token.
    bd = breakdown_of({"raw": [3.65], "eval": [4.19], "sample": [5.14], "completion": [5.10],
                       "http": [5.83]}, errors={"bias": "not asked"})
    shares = bd.shares()
    assert [s.key for s in shares] == ["raw", "eval", "sample", "completion", "http"]
    assert [round(s.added_ms, 2) for s in shares] == [3.65, 0.54, 0.95, -0.04, 0.73]
    assert sum(s.share or 0 for s in shares) == pytest.approx(1.0)
    assert bd.gpu_share() == pytest.approx(3.65 / 5.83)
    lines = bd.lines()
    assert lines[0].startswith("raw decode loop") and "63%" in lines[0]
    assert lines[-1] == f"{'EOG logit bias':<28} not measured: not asked"
    assert breakdown_json(bd)["not_measured"] == {"bias": "not asked"}
    md = breakdown_md("s", bd)
    assert "| llama_cpp.server over HTTP | 5.830 |" in md and "not measured: not asked" in md


def test_records_without_the_new_fields_still_load() -> None:
    old = {"study": "s", "finalists": [], "winner_trial": 1, "leader_trial": 1, "tie": False,
           "reason": "r", "measured_at": "t"}
    report = FinalistReport.model_validate(old)
    assert report.breakdown is None and report.breakdown_error is None
    served = ServedFigures.model_validate({
        "source": "server", "requests": 1, "prompt_tokens": 8, "gen_tokens": 4,
        "ttft_s": Stat.of([0.1]).model_dump(), "gen_tps": None,
        "request_s": Stat.of([0.2]).model_dump()})
    assert served.prompt_lengths is None and served.prompt_note is None


def test_the_http_stage_comes_only_from_figures_over_http() -> None:
    fig = ServedFigures(source="server", requests=2, prompt_tokens=8, gen_tokens=4,
                        ttft_s=Stat.of([0.1, 0.1]), gen_tps=Stat.of([200.0, 250.0]),
                        request_s=Stat.of([0.2, 0.2]))
    stage = http_stage(fig, None)
    assert stage.ms_per_token is not None
    assert sorted(stage.ms_per_token.samples) == [4.0, 5.0]
    assert http_stage(fig.model_copy(update={"source": "worker"}), None).error == (
        "the served figures were not taken over HTTP")
    assert http_stage(None, "the server exited").error == "the server exited"


def server_defaults() -> dict[str, float]:
    from llama_cpp.server.types import CreateCompletionRequest

    fields = CreateCompletionRequest.model_fields
    return {k: float(fields[k].default)
            for k in ("temperature", "top_k", "top_p", "min_p", "repeat_penalty")}


def check(bd: TokenBreakdown, served: ServedFigures) -> None:
    assert [s.key for s in bd.stages] == [*IN_PROCESS, "http"]
    for s in bd.stages:
        assert s.error is None, (s.key, s.error)
        assert s.ms_per_token is not None and len(s.ms_per_token.samples) == (
            2 if s.key != "http" else served.requests)
        assert 0 < s.ms_per_token.min <= s.ms_per_token.median <= s.ms_per_token.max
    assert bd.sampling == server_defaults()
    assert (bd.prompt_tokens, bd.gen_tokens, bd.repetitions, bd.threads) == (32, 8, 2, 1)
    # The decode's share of the served token: positive; above 1 only when the raw loop ran
    # slower than the HTTP requests (timed apart, on 2 shared cores: seen at 1.5).
    assert (bd.gpu_share() or 0) > 0


def test_breakdown_of_smollm2_through_a_real_server(smollm2_path: Path) -> None:
    served = measure_served(smollm2_path, CPU_SPEC, WORKLOAD, None, requests=2, threads=1,
                            via="server")
    bd = measure_breakdown(smollm2_path, CPU_SPEC, 7, WORKLOAD, None, threads=1, served=served,
                           repetitions=2)
    check(bd, served)
    assert (bd.trial, bd.spec_key) == (7, CPU_SPEC.key())


def test_breakdown_of_an_unusual_vocabulary(tmp_path: Path) -> None:
    model = write_llama(tmp_path / "numbered.gguf", **SHAPES["tiny"], pieces=numbered_pieces())
    served = measure_served(model, CPU_SPEC, WORKLOAD, None, requests=2, threads=1,
                            via="server")
    bd = measure_breakdown(model, CPU_SPEC, 0, WORKLOAD, None, threads=1, served=served,
                           repetitions=2)
    check(bd, served)


def test_breakdown_without_served_figures_says_why(tiny_model: Path) -> None:
    bd = measure_breakdown(tiny_model, CPU_SPEC, 0, WORKLOAD, None, threads=1,
                           served_error="served-path prompts failed", repetitions=1)
    http = bd.stage("http")
    assert http is not None and http.error == "served-path prompts failed"
    assert bd.shares()[-1].key == "completion"  # shares of the last stage measured
    with pytest.raises(BadInput, match="at least 2 generated tokens"):
        measure_breakdown(tiny_model, CPU_SPEC, 0, Workload(prompt_tokens=8, gen_tokens=1),
                          None)


def test_the_html_report_draws_a_stacked_bar() -> None:
    from tuner.reports import plots

    bd = breakdown_of({"raw": [3.65], "eval": [4.19], "sample": [5.14], "completion": [5.10],
                       "http": [5.83]})
    svg = plots.breakdown_bar(bd)
    assert svg.startswith("<svg")
    # One segment per stage slower than every one before it (create_completion came out
    # 0.04 ms faster than sampling: no segment, said).
    for label in ("raw decode loop: 3.650 ms (+3.650, 63%)", "Llama.eval: 4.190 ms (+0.540, 9%)",
                  "llama_cpp.server over HTTP: 5.830 ms (+0.730, 13%)",
                  "streamed create_completion: 5.100 ms (-0.040, -1%), no segment"):
        assert label in svg, label
