"""The whole job on real components: `tuner sweep --device cpu` on the real SmolLM2-135M with
the real llama-cpp-python, then `tuner report`, then a real llama_cpp.server loading the
production config it wrote and answering a completion."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml

from tests.cli_run import one_line_error, tuner
from tests.server_run import complete, free_port, running_server
from tests.spaces import write_space
from tuner.builds.cpuflags import pip_install_command
from tuner.results.studystore import default_storage, list_studies, records_of, require_study

SERVED = 3  # requests per finalist through the real server
GRID = 3
PROMPT, GEN = 8, 4  # tokens: every stage runs, on one CPU thread, in about 40 s


def sweep_args(model: Path, root: Path) -> list[object]:
    return ["sweep", "--model", model, "--device", "cpu", "--space", root / "space.yaml",
            "--prompt-tokens", PROMPT, "--gen-tokens", GEN, "--n-ctx", 256, "--repetitions", 2,
            "--results", root / "results", "--out", root / "configs" / "production.yaml",
            "--finalist-rounds", 2, "--served-requests", SERVED]


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> dict:
    root = tmp_path_factory.mktemp("e2e")
    # Three settings, all of them finalists: the grid rule, the trials, two finalist rounds in
    # fresh workers and the served stage through a real llama_cpp.server, on the real model.
    write_space(root / "space.yaml", n_batch=[64], n_ubatch=[64],  # read by sweep_args
                flash_attn=[False, True], kv_cache=["f16/f16", "q8_0/q8_0"])
    proc = tuner(*sweep_args(smollm2_path, root), cwd=root)
    return {"root": root, "proc": proc, "model": smollm2_path}


def test_cpu_sweep_stores_verified_trials(swept: dict) -> None:
    proc, root = swept["proc"], swept["root"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    studies = list_studies(default_storage(root / "results"))
    assert len(studies) == 1
    records = records_of(default_storage(root / "results"), studies[0])
    # grid: (64,64) x {nofa f16, fa f16, fa q8_0}: nofa q8_0 is left out (q8_0 V needs
    # flash attention)
    assert len(records) == GRID
    assert len({r.spec_key for r in records}) == GRID
    for r in records:
        assert r.state.value == "complete", (r.error, r.log_tail)
        assert r.verification.verified, r.verification.reasons
        assert "layers on CPU" in r.verification.summary
        m = r.measurement
        assert m is not None and m.pp_tps.median > 0 and m.tg_tps.median > 0
        assert len(m.pp_seconds.samples) == 2 and m.pp_seconds.min <= m.pp_seconds.median
        assert r.environment.llama_cpp_python == "0.3.36"
        assert r.environment.model_bytes == swept["model"].stat().st_size
        assert len(r.environment.model_sha256) == 64
        assert r.buffers_mib["model"], "model buffer sizes per device are recorded"
    # the baseline (llama-cpp-python's defaults, capped by the prompt) runs first
    first = min(records, key=lambda r: r.number)
    assert first.spec.context.flash_attn is False and first.spec.context.type_k == "f16"


def test_production_config_is_the_finalists_winner(swept: dict) -> None:
    root = swept["root"]
    store = require_study(default_storage(root / "results"))
    records = store.records()
    final = store.finalists()
    assert final is not None and len(final.finalists) >= 3  # the top 3 at least
    best = next(r for r in records if r.number == final.winner_trial)
    assert best.usable
    config = yaml.safe_load((root / "configs" / "production.yaml").read_text())
    entry = config["models"][0]
    assert entry["model"] == str(swept["model"].resolve())
    c = best.spec.context
    assert (entry["n_batch"], entry["n_ubatch"], entry["flash_attn"]) == (
        c.n_batch, c.n_ubatch, c.flash_attn)
    assert entry["n_ctx"] == 256 and entry["n_gpu_layers"] == 0
    side = json.loads((root / "configs" / "production.tuner.json").read_text())
    assert side["provenance"]["trial_id"] == best.trial_id
    # The finalists went through a real llama_cpp.server: both kinds of figures, named.
    assert side["served"]["kind"] and side["served"]["source"] == "server"
    assert side["served"]["requests"] == SERVED and side["served"]["gen_tokens"] == GEN
    assert side["figures"]["kind"] != side["served"]["kind"]
    win = next(f for f in final.finalists if f.trial == final.winner_trial)
    assert win.served is not None and win.served["n_threads"] == side["served"]["n_threads"]
    report = tuner("report", "--results", root / "results")
    assert report.returncode == 0 and "served" in report.stdout, report.stderr
    assert f"wrote {root / 'configs' / 'production.yaml'}" in swept["proc"].stdout


def test_report_formats(swept: dict) -> None:
    results = swept["root"] / "results"
    as_json = tuner("report", "--results", results, "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)
    assert len(rows) == GRID
    times = [row["request_s"] for row in rows]
    assert times == sorted(times)
    assert all(row["verified"] == "yes" for row in rows)
    as_csv = tuner("report", "--results", results, "--format", "csv")
    assert len(list(csv.DictReader(io.StringIO(as_csv.stdout)))) == GRID
    table = tuner("report", "--results", results)
    assert table.returncode == 0 and "pp" in table.stdout and "verified" in table.stdout
    exported = swept["root"] / "report.md"
    md = tuner("report", "--results", results, "--format", "md", "-o", exported)
    assert md.returncode == 0 and exported.read_text().count("\n|") >= GRID + 1


def test_real_server_answers_from_the_written_config(swept: dict, tmp_path: Path) -> None:
    config = swept["root"] / "configs" / "production.yaml"
    port = free_port()
    served = tmp_path / "production.yaml"  # same settings, a free port for this test
    data = yaml.safe_load(config.read_text())
    data["port"] = port
    served.write_text(yaml.safe_dump(data))
    side = config.with_name("production.tuner.json")
    served.with_name("production.tuner.json").write_text(side.read_text())
    with running_server(served, tmp_path / "server.log", port) as (base, models):
        assert models["data"][0]["id"] == "SmolLM2-135M-Instruct.Q4_1"
        assert complete(base).strip()


def test_rerun_resumes_and_runs_nothing_new(swept: dict) -> None:
    root = swept["root"]
    before = require_study(default_storage(root / "results")).records()
    again = tuner(*sweep_args(swept["model"], root), cwd=root)
    assert again.returncode == 0, again.stderr
    after = require_study(default_storage(root / "results")).records()
    assert [r.trial_id for r in after] == [r.trial_id for r in before]
    assert "0 to run" in again.stderr
    assert (root / "configs" / "production.yaml.bak").exists()


def test_cuda_sweep_on_cpu_build_exits_3_with_the_install_hint(smollm2_path: Path,
                                                               tmp_path: Path) -> None:
    proc = tuner("sweep", "--model", smollm2_path, "--results", tmp_path / "r",
                 "--out", tmp_path / "p.yaml", "--builds", tmp_path / "no-builds")
    assert proc.returncode == 3
    line = one_line_error(proc)
    assert "cannot offload to a GPU" in line
    assert pip_install_command(cuda=True) in proc.stderr.replace("\n", " ")
    url = default_storage(tmp_path / "r")
    assert not any(records_of(url, s) for s in list_studies(url)), "no trial ran"
    assert not (tmp_path / "p.yaml").exists()
