"""Served figures never go missing for want of prompts: a model whose vocabulary is byte tokens
plus numbered pieces ('p0', 'p1', ..., written with the gguf package), whose every text starts
with the same bytes of SentencePiece's space prefix, gets prompts of the workload's length
(new after that forced prefix) and real served figures through llama_cpp.server; where no
prompt of the exact length exists the nearest below is used and recorded; a served phase that
fails says why in the sidecar and in the sweep's output; `tuner verify` exits 3 with one line
where the served workload cannot be built."""

from __future__ import annotations

import json
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest

from tests.cli_run import one_line_error, tuner
from tests.spaces import write_space
from tuner.deploy.served import prompts_for
from tuner.deploy.servedmeasure import measure_served
from tuner.models.modelgen import SHAPES, numbered_pieces, write_llama
from tuner.specs import ContextSettings, ModelSettings, TrialSpec, Workload
from tuner.worker.served import build_prompts, prefix_reuse

CPU_SPEC = TrialSpec(model=ModelSettings(device="cpu"),
                     context=ContextSettings(n_batch=32, n_ubatch=32))
WORKLOAD = Workload(prompt_tokens=40, gen_tokens=6, n_ctx=64)


@pytest.fixture(scope="module")
def numbered_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny shape with a vocabulary of byte tokens and numbered pieces only."""
    return write_llama(tmp_path_factory.mktemp("numbered") / "numbered-f16.gguf",
                       **SHAPES["tiny"], pieces=numbered_pieces())


@pytest.fixture(scope="module")
def numbered_tokenizer(numbered_model: Path):  # type: ignore[no-untyped-def]
    import llama_cpp

    llm = llama_cpp.Llama(str(numbered_model), vocab_only=True, verbose=False)
    return lambda text: llm.tokenize(text.encode("utf-8"), special=True)


def test_the_vocabulary_forces_a_shared_prefix(numbered_tokenizer) -> None:  # type: ignore[no-untyped-def]
    # Every text starts with BOS and the three bytes of '\u2581' (no piece holds it): the old
    # builder, which wanted a new first token after BOS, could build no second prompt.
    heads = [numbered_tokenizer(h) for h in ("Alpha", "Bravo", "p12", "x")]
    assert all(h[:4] == heads[0][:4] for h in heads)
    assert len({h[4] for h in heads}) == len(heads)


def test_prompts_for_a_vocabulary_of_bytes_and_numbered_pieces(numbered_model: Path) -> None:
    made = prompts_for(str(numbered_model), 40, 6, {})
    assert made.lengths == [40] * 6  # exact: a one-byte filler lands on any length
    assert len(set(made.prompts)) == 6
    assert made.forced_prefix == 4  # BOS + the space prefix's three byte tokens
    # No prompt shares more with the one before it than every prompt must.
    assert made.max_prefix_reuse == made.forced_prefix
    assert made.eog == [2]


def test_nearest_length_below_when_no_prompt_is_exact(numbered_tokenizer) -> None:  # type: ignore[no-untyped-def]
    # The real tokenizer with every token counted twice: no text has an odd length, so 41
    # tokens cannot be made; 40 is the nearest below, and it is said.
    def doubled(text: str) -> list[int]:
        return [t for tok in numbered_tokenizer(text) for t in (tok, tok)]

    made = build_prompts(doubled, 41, 4)
    assert made.lengths == [40] * 4 and not made.exact
    assert [len(doubled(p)) for p in made.prompts] == made.lengths
    assert prefix_reuse([doubled(p) for p in made.prompts]) == made.forced_prefix
    exact = build_prompts(doubled, 40, 2)
    assert exact.exact and exact.lengths == [40, 40]


def test_no_prompt_of_the_length_is_a_clear_error(numbered_tokenizer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError, match="cannot build a prompt of 2 tokens"):
        build_prompts(numbered_tokenizer, 2, 2)


def test_served_figures_of_the_unusual_vocabulary_through_a_real_server(
        numbered_model: Path) -> None:
    figures = measure_served(numbered_model, CPU_SPEC, WORKLOAD, None, requests=2, threads=1,
                             via="server")
    assert (figures.source, figures.requests, figures.prompt_tokens) == ("server", 2, 40)
    assert figures.gen_tps is not None and len(figures.gen_tps.samples) == 2
    assert figures.prompt_lengths is None and figures.prompt_note is None  # exact
    assert figures.forced_prefix == 4 and figures.max_prefix_reuse == 4


def test_served_figures_in_the_worker_for_the_unusual_vocabulary(numbered_model: Path) -> None:
    figures = measure_served(numbered_model, CPU_SPEC, WORKLOAD, None, requests=2, threads=1)
    assert figures.source == "worker" and figures.gen_tps is not None
    assert figures.forced_prefix == 4 and figures.max_prefix_reuse == 4


def _sweep(tmp_path: Path, model: Path, *, prompt_tokens: int,
           rounds: int) -> tuple[CompletedProcess[str], Path, dict[str, Any]]:
    """A one-setting CPU sweep of ``model`` with its finalist and served phases (``rounds``
    finalist rounds and as many repetitions), which must exit 0: its output, the config
    written and the sidecar beside it."""
    space = write_space(tmp_path / "space.yaml", n_batch=[32], n_ubatch=[32], n_threads=[1])
    out = tmp_path / "configs" / "production.yaml"
    proc = tuner("sweep", "--model", model, "--device", "cpu", "--space", space,
                 "--prompt-tokens", prompt_tokens, "--gen-tokens", 6, "--n-ctx", 64,
                 "--repetitions", rounds, "--results", tmp_path / "results", "--out", out,
                 "--finalist-rounds", rounds, "--confirm-top", 0, "--served-requests", 2,
                 cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out, json.loads(out.with_name("production.tuner.json").read_text())


def test_a_sweep_of_the_unusual_vocabulary_writes_served_figures_and_the_breakdown(
        tmp_path: Path, numbered_model: Path) -> None:
    proc, out, side = _sweep(tmp_path, numbered_model, prompt_tokens=40, rounds=2)
    served = side["served"]
    assert served is not None and "error" not in served, served
    assert served["source"] == "server" and served["forced_prefix"] == 4
    # The raw figures are the finalists' re-measurement, named as such.
    figures = side["figures"]
    assert figures["source"].startswith("finalists: mean of 2 fresh processes")
    assert figures["pp_tps"]["low"] <= figures["pp_tps"]["value"] <= figures["pp_tps"]["high"]
    assert figures["sources"]["load_s"].startswith("search trial #")
    winner = next(f for f in side["finalists"]["finalists"]
                  if f["trial"] == side["finalists"]["winner_trial"])
    assert figures["request_s"]["value"] == winner["request_seconds"]["value"]
    # The per-token breakdown of the winner, every stage measured.
    bd = side["breakdown"]
    assert [s["key"] for s in bd["stages"]] == ["raw", "eval", "sample", "bias", "completion",
                                                "http"]
    assert all(s["ms_per_token"] is not None for s in bd["stages"]), bd["stages"]
    assert bd["sampling"] == {"temperature": 0.8, "top_k": 40.0, "top_p": 0.95, "min_p": 0.05,
                              "repeat_penalty": 1.1}
    assert "per-token breakdown of #" in proc.stdout + proc.stderr
    # The report shows it.
    report = tuner("report", "--results", tmp_path / "results", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "per token" in report.stdout and "llama_cpp.server over HTTP" in report.stdout
    # The deployment verifies from another directory against its served figures (a wide
    # tolerance: 2 shared cores, see tests/test_verify.py).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    verify = tuner("verify", out, "--requests", 1, "--tolerance", 1000, cwd=elsewhere)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "reference: the sidecar's served figures" in verify.stdout


def test_verify_of_a_sidecar_that_is_not_an_object_is_bad_input(tmp_path: Path,
                                                               numbered_model: Path) -> None:
    config = tmp_path / "production.yaml"
    config.write_text(f"models:\n- model: {numbered_model}\n")
    config.with_name("production.tuner.json").write_text("[1, 2]")
    proc = tuner("verify", config, cwd=tmp_path)
    assert proc.returncode == 2
    assert "holds a JSON list, not an object" in one_line_error(proc)


def test_a_served_phase_that_fails_says_why(tmp_path: Path, numbered_model: Path) -> None:
    # One prompt token: no text of this vocabulary is that short (BOS alone is one), so no
    # request can be built; the sweep still writes its config and says why it has no served
    # figures, and verify ends with one line, exit 3.
    proc, out, side = _sweep(tmp_path, numbered_model, prompt_tokens=1, rounds=1)
    assert "cannot build a prompt of 1 tokens" in side["served"]["error"]
    assert "served figures of #" in proc.stdout + proc.stderr
    verify = tuner("verify", out, "--requests", 1, cwd=tmp_path)
    assert verify.returncode == 3, verify.stdout + verify.stderr
    line = one_line_error(verify)
    assert "the served workload could not be measured" in line
    assert "cannot build a prompt of 1 tokens" in line
