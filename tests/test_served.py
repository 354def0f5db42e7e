"""Served-path figures on real components: the tiny random-weight model loaded by
llama_cpp.server's own loader in a spawned process, streamed completions timed; prompts of an
exact token count that never share a prefix; the config the server loads runs what a trial
measured."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.records_factory import make_record
from tuner.deploy.configcheck import check_config
from tuner.deploy.prodconfig import server_config
from tuner.deploy.served import prompts_for
from tuner.deploy.servedmeasure import measure_served
from tuner.errors import TunerError
from tuner.evidence.effective import SPEED_FIELDS, check_effective, differences, trial_settings
from tuner.specs import ContextSettings, ModelSettings, TrialSpec, Workload

CPU_SPEC = TrialSpec(model=ModelSettings(device="cpu"),
                     context=ContextSettings(n_batch=32, n_ubatch=32))
WORKLOAD = Workload(prompt_tokens=24, gen_tokens=6, n_ctx=64)


def test_measure_served_on_the_tiny_model(tiny_model: Path) -> None:
    figures = measure_served(tiny_model, CPU_SPEC, WORKLOAD, None, requests=3, threads=1)
    assert figures.source == "worker"
    assert (figures.requests, figures.warmup) == (3, 1)
    assert (figures.prompt_tokens, figures.gen_tokens) == (24, 6)
    assert (figures.n_threads, figures.n_threads_batch) == (1, 1)
    for stat in (figures.ttft_s, figures.gen_tps, figures.request_s):
        assert stat is not None and len(stat.samples) == 3
        assert 0 < stat.min <= stat.median <= stat.max
        assert stat.rel_spread >= 0
    # The client's request time holds the time to first token and the generation.
    assert figures.request_s.median > figures.ttft_s.median
    # No prompt shares more than BOS with the one before it: no KV prefix was reused.
    assert figures.max_prefix_reuse <= 1
    assert "tok/s" in figures.summary() and "[worker, 3 requests]" in figures.summary()


def test_prompts_have_the_exact_token_count_and_new_first_tokens(tiny_model: Path,
                                                                  smollm2_path: Path) -> None:
    for model, has_bos in ((tiny_model, True), (smollm2_path, False)):
        made = prompts_for(str(model), 40, 6, {})
        assert made.lengths == [40] * 6, model
        assert len(set(made.prompts)) == 6
        assert made.max_prefix_reuse == (1 if has_bos else 0), model
        assert made.eog, "the end-of-generation tokens are known"


def test_a_config_leaving_out_a_field_gets_the_servers_default(smollm2_path: Path) -> None:
    record = make_record(1, device="cpu", n_threads=2, model_path=str(smollm2_path))
    config = server_config(record, str(smollm2_path))
    expected = trial_settings(record.spec, record.workload, 2)
    effective = check_config(config)
    assert set(effective) == set(SPEED_FIELDS)
    assert differences(effective, expected) == []
    check_effective(effective, expected)
    # Without logits_all and n_threads, the server decides them, not the trial.
    for name in ("logits_all", "n_threads"):
        del config["models"][0][name]
    loose = check_config(config)
    assert loose["logits_all"] is True
    with pytest.raises(TunerError, match="logits_all is True in the loaded config"):
        check_effective(loose, expected)


def test_an_environment_variable_cannot_change_a_written_field(smollm2_path: Path) -> None:
    record = make_record(1, device="cpu", n_threads=2, model_path=str(smollm2_path))
    config = server_config(record, str(smollm2_path))
    # pydantic-settings fills a field the file leaves out from the environment.
    effective = check_config(config, env={"N_THREADS": "1", "N_CTX": "64"})
    assert (effective["n_threads"], effective["n_ctx"]) == (2, record.workload.n_ctx)
    del config["models"][0]["n_ctx"]
    assert check_config(config, env={"N_CTX": "64"})["n_ctx"] == 64


def test_measure_served_through_a_real_server(tiny_model: Path) -> None:
    figures = measure_served(tiny_model, CPU_SPEC, WORKLOAD, None, requests=2, threads=1,
                             via="server")
    assert (figures.source, figures.requests, figures.n_threads) == ("server", 2, 1)
    assert figures.gen_tps is not None and len(figures.gen_tps.samples) == 2
    assert figures.max_prefix_reuse <= 1
    with pytest.raises(TunerError, match="via must be"):
        measure_served(tiny_model, CPU_SPEC, WORKLOAD, None, via="http")
