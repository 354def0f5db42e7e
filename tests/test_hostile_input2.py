"""Hostile input, round 2 (issue 32): each reproducer of the adversarial pass, through the real
CLI where the door is the CLI. A damaged sidecar or environment file, a bad --url, a relative
model path, ``nan``/``inf`` for any float option, bad CUDA architectures, a space with values
llama.cpp cannot run, empty or with a key given twice, ``--gpus`` on the CPU: each exit 2 with
one line, before anything starts. A prompt-only workload, a JSONL export read back, a log of
two loads and a config the confirmation dropped are checked for what they say."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli_run import one_line_error, tuner
from tests.records_factory import make_record, store_records
from tests.report_data import drift_from, finalists_from, throttled
from tests.spaces import write_space
from tests.test_finalists import scripted
from tests.workerhooks import faults
from tuner.deploy.prodconfig import write_production
from tuner.deploy.sidecar import read_sidecar
from tuner.models.modelcheck import check_model
from tuner.results.records import ServedFigures, Stat, TrialRecord
from tuner.results.studystore import default_storage, open_study
from tuner.search.finalists import FinalistOptions, confirm_and_settle
from tuner.search.space import load_space, physical_memory
from tuner.settings import MAX_BATCH
from tuner.specs import Workload
from tuner.worker.served import request_body

FIXTURES = Path(__file__).resolve().parent / "fixtures"
WL = Workload(prompt_tokens=32, gen_tokens=8, n_ctx=64, repetitions=1, warmup=0)


# -- verify: every input checked before a server starts (item 5, item 11) ------------------

@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A config, sidecar and environment file written by the real writer from a TEST DATA
    record of the tiny model (CPU, one thread), with served figures (TEST DATA too): every
    test below damages a copy and never gets as far as starting a server."""
    root = tmp_path_factory.mktemp("deployment")
    record = make_record(0, device="cpu", n_gpu_layers=0, n_threads=1, n_batch=64,
                         n_ubatch=64, workload=WL, model_path=str(tiny_model))
    served = ServedFigures(source="server", requests=2, prompt_tokens=32, gen_tokens=8,
                           ttft_s=Stat.of([0.01, 0.012]), gen_tps=Stat.of([500.0, 520.0]),
                           request_s=Stat.of([0.03, 0.031]))
    out = root / "production.yaml"
    write_production(record, out, model_path=str(tiny_model), results_dir=root / "results",
                     build_lib_dir=None, env={}, served=served)
    return out


def damaged(config: Path, dest: Path, *, side: Callable[[Any], Any] | None = None,
            entry: Callable[[dict], None] | None = None, env_text: str | None = None,
            top: Callable[[dict], None] | None = None) -> Path:
    """The deployment copied to ``dest`` with one part damaged on purpose."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("production.yaml", "production.tuner.json", "production.env"):
        shutil.copy(config.with_name(name), dest / name)
    if side is not None:
        data = json.loads((dest / "production.tuner.json").read_text())
        (dest / "production.tuner.json").write_text(json.dumps(side(data)))
    if entry is not None or top is not None:
        data = yaml.safe_load((dest / "production.yaml").read_text())
        if entry is not None:
            entry(data["models"][0])
        if top is not None:
            top(data)
        (dest / "production.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    if env_text is not None:
        (dest / "production.env").write_text(env_text)
    return dest / "production.yaml"


def set_(key: str, value: Any) -> Callable[[dict], dict]:
    def change(d: dict) -> dict:
        d[key] = value
        return d
    return change


def set_served_ttft(d: dict) -> dict:
    d["served"]["ttft_s"] = "quick"
    return d


def set_served_nan(d: dict) -> dict:
    d["served"]["ttft_s"]["median"] = float("nan")  # json writes NaN, and reads it back
    return d


def refused_before_start(proc: Any, config: Path) -> str:
    """Exit 2 with one error line; no server was started (no log of one beside the config,
    nothing of its banner printed)."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = one_line_error(proc)
    assert not config.with_name("production.verify.log").exists(), "a server was started"
    assert "Uvicorn" not in proc.stdout + proc.stderr and "llama_model_load" not in proc.stderr
    return line


@pytest.mark.parametrize(("damage", "words"), [
    (set_("build", "installed"), "build: Input should be"),
    (set_("environment", 7), "environment: Input should be"),
    (set_("served", "fast"), "served: Input should be"),
    (set_served_ttft, "served.ttft_s: Input should be"),
    (set_served_nan, "served: Value error, ttft_s median nan is not a finite number above 0"),
    (lambda d: [d], "holds a JSON list, not an object"),
    (lambda d: {k: v for k, v in d.items() if k != "spec"}, "spec: Field required"),
    (set_("workload", {"prompt_tokens": "many"}), "workload.prompt_tokens"),
    (set_("env", {"LLAMA_CPP_LIB_PATH": 3}), "env.LLAMA_CPP_LIB_PATH"),
    (set_("env", {"A": "x\x00y"}), "env: Value error, 'A' is not a variable"),
    (set_("env", {"A=B": "x"}), "env: Value error, 'A=B' is not a variable"),
])
def test_a_damaged_sidecar_is_one_line_naming_the_field(deployment: Path, tmp_path: Path,
                                                         damage: Callable, words: str) -> None:
    config = damaged(deployment, tmp_path / "d", side=damage)
    line = refused_before_start(tuner("verify", config), config)
    assert "production.tuner.json" in line and words in line, line


def test_figures_of_a_generation_only_workload_are_a_valid_sidecar(deployment: Path,
                                                                   tmp_path: Path) -> None:
    # A prompt of 0 tokens has a raw prompt speed of 0 (tuner/worker/trialrecord.py).
    config = damaged(deployment, tmp_path / "d",
                     side=set_("figures", {"pp_tps": {"median": 0.0, "min": 0.0, "max": 0.0}}))
    assert read_sidecar(config.with_name("production.tuner.json")).figures is not None
    config = damaged(deployment, tmp_path / "e", side=set_("figures", {"pp_tps": {
        "median": -1.0}}))
    line = refused_before_start(tuner("verify", config), config)
    assert "figures.pp_tps.median: Value error, must be a finite number, 0 or above" in line


def test_a_sidecar_that_is_not_json_or_is_missing(deployment: Path, tmp_path: Path) -> None:
    config = damaged(deployment, tmp_path / "d")
    config.with_name("production.tuner.json").write_text("{not json")
    assert "is not JSON" in refused_before_start(tuner("verify", config), config)
    config.with_name("production.tuner.json").write_text("[" * 100_000 + "]" * 100_000)
    assert "is not JSON" in refused_before_start(tuner("verify", config), config)
    config.with_name("production.tuner.json").unlink()
    assert "no readable sidecar" in refused_before_start(tuner("verify", config), config)


def test_a_missing_or_damaged_env_file_is_one_line(deployment: Path, tmp_path: Path) -> None:
    config = damaged(deployment, tmp_path / "d")
    config.with_name("production.env").unlink()
    line = refused_before_start(tuner("verify", config), config)
    assert "no environment file" in line and "production.env" in line
    config.with_name("production.env").symlink_to("/dev/zero")
    line = refused_before_start(tuner("verify", config), config)
    assert "production.env is not a regular file" in line
    config.with_name("production.env").unlink()
    for text, words in (("JUST WORDS\n", "line 1: not a KEY=value line"),
                        ("# ok\nA='unclosed\n", "line 2: No closing quotation"),
                        ("1A=x\n", "line 1: not a KEY=value line"),
                        ("A=two words\n", "line 1: more than one word"),
                        ("A=x\x00y\n", "line 1: a NUL byte in the value")):
        config.with_name("production.env").write_text(text)
        assert words in refused_before_start(tuner("verify", config), config), text


@pytest.mark.parametrize(("entry", "top", "words"), [
    (lambda e: e.update(n_batch="lots"), None, "models.0.n_batch"),
    (lambda e: e.update(no_such_setting=1), None, "keys the server does not accept: "
                                                  "no_such_setting"),
    (None, lambda c: c.update(colour="blue"), "keys the server does not accept: colour"),
])
def test_a_config_the_server_refuses_is_bad_input_before_it_starts(
        deployment: Path, tmp_path: Path, entry: Callable | None, top: Callable | None,
        words: str) -> None:
    config = damaged(deployment, tmp_path / "d", entry=entry, top=top)
    line = refused_before_start(tuner("verify", config), config)
    assert words in line, line


def test_a_config_with_a_key_given_twice_is_refused(deployment: Path, tmp_path: Path) -> None:
    config = damaged(deployment, tmp_path / "d")
    config.write_text(config.read_text() + "port: 9000\n")  # the writer's port: 8000, above
    line = refused_before_start(tuner("verify", config), config)
    assert "key 'port' is given twice" in line


def test_model_paths_verify_refuses_itself(deployment: Path, tmp_path: Path,
                                           tiny_model: Path) -> None:
    # A relative path resolves against the server's working directory, which nothing fixes:
    # refused even where it would resolve from here.
    (tmp_path / "m.gguf").symlink_to(tiny_model)
    config = damaged(deployment, tmp_path / "d", entry=lambda e: e.update(model="m.gguf"))
    proc = tuner("verify", config, cwd=tmp_path)
    line = refused_before_start(proc, config)
    assert "model path 'm.gguf'" in line and "is relative" in line
    config = damaged(deployment, tmp_path / "e", entry=lambda e: e.update(model=""))
    line = refused_before_start(tuner("verify", config), config)
    assert "names no model" in line and "  " not in line


@pytest.mark.parametrize("args", [
    ("--timeout", "inf"), ("--timeout", "nan"), ("--timeout", "1e400"), ("--timeout", "0.5"),
    ("--tolerance", "nan"), ("--tolerance", "inf"), ("--tolerance", "-1"),
    ("--url", "notaurl"), ("--url", "ftp://x"), ("--url", "http://"),
    ("--url", "http://127.0.0.1:99999"),
])
def test_bad_verify_options_exit_2(deployment: Path, tmp_path: Path, args: tuple) -> None:
    config = damaged(deployment, tmp_path / "d")
    line = refused_before_start(tuner("verify", config, *args), config)
    assert args[0] in line or "--url" in line, line


class _PlainHTTP(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # quiet
        pass


@pytest.fixture()
def plain_http() -> Iterator[str]:
    """A plain HTTP server (python's http.server: no POST, answers 501 with an HTML page)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _PlainHTTP)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_url_of_a_plain_http_server_is_one_short_line(deployment: Path, tmp_path: Path,
                                                      plain_http: str) -> None:
    config = damaged(deployment, tmp_path / "d")
    proc = tuner("verify", config, "--url", plain_http, "--requests", 1)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    line = one_line_error(proc)
    assert "the service answered 501: an HTML page" in line and "<" not in line
    assert len(line) < 200


# FAKE streams: llama-server ends a stream it cannot finish with an error event (run 31: a
# random-weight gemma3 file on CUDA; the JSON of a sampled piece failed, type_error.316), which
# cannot be produced on demand from a real server. Each reply starts like a real one: 200, SSE.
GOOD = {"choices": [{"text": "a", "index": 0, "finish_reason": None}]}
STREAMS = {
    "error": ([GOOD, {"error": {"code": 500, "message": "[json.exception.type_error.316] "
                                "invalid UTF-8 byte at index 98: 0xC0", "type": "server_error"}}],
              "the service streamed an error: [json.exception.type_error.316] invalid UTF-8"),
    "not json": ([GOOD, "{truncated"], "streamed what is not a JSON object: '{truncated'"),
    "usage alone": ([{"choices": [], "usage": {"completion_tokens": 0}}],
                    "streamed no completion chunk"),
}


def _streaming(events: list[Any]) -> type[http.server.BaseHTTPRequestHandler]:
    class Stream(_PlainHTTP):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            for e in events:
                data = e if isinstance(e, str) else json.dumps(e)
                self.wfile.write(f"data: {data}\n\n".encode())
            if not any(isinstance(e, dict) and "error" in e for e in events):
                self.wfile.write(b"data: [DONE]\n\n")
    return Stream


class _JsonError(_PlainHTTP):
    """A FAKE server's error as llama-server answers one: 500 with a JSON error object."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.dumps({"error": {"code": 500, "message": "the sampler\nfailed",
                                     "type": "server_error"}}).encode()
        self.send_response(500)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize("kind", [*sorted(STREAMS), "json error"])
def test_a_stream_that_breaks_off_is_one_short_line(deployment: Path, tmp_path: Path,
                                                    kind: str) -> None:
    events, expected = STREAMS.get(kind) or ([], "the service answered 500: the sampler failed")
    handler = _streaming(events) if kind in STREAMS else _JsonError
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = damaged(deployment, tmp_path / "d")
        proc = tuner("verify", config, "--url", f"http://127.0.0.1:{server.server_address[1]}",
                     "--requests", 1)
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 3, proc.stdout + proc.stderr
    line = one_line_error(proc)
    assert expected in line, line
    assert "KeyError" not in proc.stderr and "Traceback" not in proc.stderr


# -- every float option: finite numbers only (item 11) --------------------------------------

@pytest.mark.parametrize("args", [
    ("sweep", "--trial-timeout", "nan"), ("sweep", "--trial-timeout", "inf"),
    ("sweep", "--timeout", "nan"), ("sweep", "--timeout", "inf"),
    ("sweep", "--max-vram", "inf"), ("sweep", "--max-vram", "nan"),
    ("report", "--peak-tflops", "nan"), ("report", "--peak-bandwidth-gbs", "inf"),
])
def test_float_options_refuse_nan_and_inf(tiny_model: Path, tmp_path: Path,
                                          args: tuple) -> None:
    extra = ("--model", tiny_model, "--device", "cpu", "--results", tmp_path / "r") \
        if args[0] == "sweep" else ("--results", tmp_path / "r")
    proc = tuner(*args, *extra)
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc)
    assert args[1] in line and "not a finite number" in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("arch", ["abc", "-1", "0", "90,,91", "9", "90;", "sm_90"])
def test_bad_cuda_architectures_are_refused(tmp_path: Path, arch: str) -> None:
    proc = tuner("build", "--variant", "force-cublas", "--dry-run", "--cuda-arch", arch,
                 "--builds", tmp_path / "b")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "bad CUDA architecture list" in one_line_error(proc)


@pytest.mark.parametrize(("arch", "cmake"), [("90", "90"), ("86,90", "86;90"),
                                             ("90a-real", "90a-real"), ("native", "native")])
def test_good_cuda_architectures_pass(tmp_path: Path, arch: str, cmake: str) -> None:
    proc = tuner("build", "--variant", "force-cublas", "--dry-run", "--cuda-arch", arch,
                 "--builds", tmp_path / "b")
    assert proc.returncode == 0, proc.stderr
    assert f"-DCMAKE_CUDA_ARCHITECTURES={cmake}" in proc.stdout.replace("'", "")


def test_a_source_that_is_not_an_archive_is_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not a tarball\n" * 50)
    proc = tuner("build", "--variant", "cpu", "--dry-run", "--source", junk,
                 "--builds", tmp_path / "b")
    assert proc.returncode == 2, proc.stderr
    assert f"cannot read source archive {junk}" in one_line_error(proc)


# -- sweep: refused at the door (items 6 and 10, and the study name) -----------------------

def sweep_refused(model: Path, root: Path, *extra: object) -> str:
    proc = tuner("sweep", "--model", model, "--device", "cpu", "--prompt-tokens", 32,
                 "--gen-tokens", 8, "--n-ctx", 256, "--repetitions", 1,
                 "--results", root / "results", "--out", root / "production.yaml", *extra)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert not (root / "results").exists() and not (root / "production.yaml").exists()
    return one_line_error(proc)


@pytest.mark.parametrize(("args", "words"), [
    (("--seed", 2**32), "--seed"),  # numpy's seeds end below 2^32: a crash after the search
    (("--prompt-tokens", 0, "--gen-tokens", 0), "needs prompt or generated tokens"),
])
def test_other_sweep_values_are_refused_before_it_starts(tiny_model: Path, tmp_path: Path,
                                                         args: tuple, words: str) -> None:
    assert words in sweep_refused(tiny_model, tmp_path, *args)


def test_doctor_n_gpu_layers_takes_minus_one_for_all(tmp_path: Path) -> None:
    proc = tuner("doctor", "--log", FIXTURES / "cpu-build-load.log", "--n-gpu-layers", -5)
    assert proc.returncode == 2 and "--n-gpu-layers" in one_line_error(proc)


def test_gpus_is_refused_on_the_cpu(tiny_model: Path, tmp_path: Path) -> None:
    line = sweep_refused(tiny_model, tmp_path, "--gpus", "0,1")
    assert "--gpus" in line and "--device cpu" in line


def test_a_study_name_over_100_characters_names_the_limit(tiny_model: Path,
                                                         tmp_path: Path) -> None:
    line = sweep_refused(tiny_model, tmp_path, "--study", "s" * 150)
    assert "1 to 100 characters" in line and "(150 characters)" in line and len(line) < 300


@pytest.mark.parametrize(("text", "words"), [
    ("", "is empty: it lists no setting"),
    ("# nothing here\n", "is empty: it lists no setting"),
    ("{}\n", "is empty: it lists no setting"),
    ("n_batch: [64]\nn_batch: [128]\n", "key 'n_batch' is given twice (line 2)"),
    ("n_batch: [true]\n", "n_batch.0: Input should be a valid integer"),
    ("n_batch: ['512']\n", "n_batch.0: Input should be a valid integer"),
    ("n_gpu_layers: [-5]\n", "n_gpu_layers: Value error, -5 is outside the range of "
                             "n_gpu_layers: -1 and up (layers offloaded to the GPU (-1: all))"),
    ("n_batch: [12345678901234567890]\n", f"is outside the range of n_batch: 1 to {MAX_BATCH}"),
    ("n_ubatch: [0]\n", "n_ubatch: Value error, 0 is outside the range of n_ubatch: 1 to"),
    ("flash_attn: [1]\n", "flash_attn.0: Input should be a valid boolean"),
    ("n_threads: [99999999]\n", "n_threads: Value error, 99999999 is outside the range of "
                                "n_threads: 1 to 512"),
    ("tensor_splits: [[.inf, 1]]\n", "must hold finite proportions"),
    ("tensor_splits: [[1.0e308, 1.0e308]]\n", "must hold finite proportions"),
    ("n_batch: [64]\n<<: {n_batch: [128]}\n", "key 'n_batch' is given twice"),
    ("n_batch: " + "[" * 100_000 + "]" * 100_000 + "\n", "is not readable YAML"),
])
def test_space_values_llama_cpp_cannot_run_are_refused(tiny_model: Path, tmp_path: Path,
                                                       text: str, words: str) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(text)
    line = sweep_refused(tiny_model, tmp_path, "--space", space)
    assert words in line, line


def test_an_n_batch_whose_logits_cannot_be_allocated_is_refused(smollm2_path: Path,
                                                               tmp_path: Path) -> None:
    # The reproducer: n_batch 1048576 on SmolLM2 (49152 tokens): llama-cpp-python's logits
    # array would be 192 GiB. Refused on any machine with less memory than that.
    info = check_model(smollm2_path)
    assert info.n_vocab == 49152
    need = 1048576 * info.n_vocab * 4
    memory = physical_memory()
    assert memory is not None
    if memory >= need:
        pytest.skip(f"this machine holds {memory / 2**30:.0f} GiB: the array would fit")
    space = write_space(tmp_path / "space.yaml", n_batch=[1048576], n_ubatch=[64])
    line = sweep_refused(smollm2_path, tmp_path, "--space", space)
    assert "n_batch 1048576 needs a 192 GiB logits array (n_batch x 49152 vocabulary" in line
    assert load_space(space).n_batch == [1048576], "the space itself is valid"


def test_n_ctx_beyond_the_training_context_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    trained = check_model(tiny_model).context_length
    assert trained is not None
    proc = tuner("sweep", "--model", tiny_model, "--device", "cpu", "--n-ctx", trained + 1,
                 "--results", tmp_path / "results", "--out", tmp_path / "p.yaml")
    assert proc.returncode == 2
    assert f"n_ctx {trained + 1} is above the model's trained context {trained}" in \
        one_line_error(proc)


# -- a prompt-only workload (item 7) and piped output (low) ---------------------------------

def test_a_prompt_only_request_asks_one_token_never_zero() -> None:
    assert request_body("p", 0, [2])["max_tokens"] == 1
    assert request_body("p", 8, [2])["max_tokens"] == 8


@pytest.fixture(scope="module")
def prompt_only(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict:
    """A real sweep of a prompt-only workload (gen 0) with its finalist and served phases,
    output piped as in a log."""
    root = tmp_path_factory.mktemp("prompt-only")
    space = write_space(root / "space.yaml", n_batch=[16, 32], n_ubatch=[16])
    out = root / "production.yaml"
    proc = tuner("sweep", "--model", tiny_model, "--device", "cpu", "--space", space,
                 "--prompt-tokens", 32, "--gen-tokens", 0, "--n-ctx", 64, "--repetitions", 1,
                 "--warmup", 0, "--finalist-rounds", 1, "--confirm-top", 0,
                 "--served-requests", 2, "--results", root / "results", "--out", out)
    return {"root": root, "proc": proc, "out": out}


def test_a_prompt_only_workload_is_measured_and_served_as_such(prompt_only: dict) -> None:
    proc = prompt_only["proc"]
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    side = json.loads(prompt_only["out"].with_name("production.tuner.json").read_text())
    assert side["workload"]["gen_tokens"] == 0
    assert side["figures"]["tg_tps"] is None, "no generation figure from zero tokens"
    served = side["served"]
    assert served["gen_tokens"] == 0 and served["max_tokens"] == 1
    assert served["gen_tps"] is None and served["ttft_s"]["median"] > 0
    report = tuner("report", "--results", prompt_only["root"] / "results")
    assert report.returncode == 0, report.stderr
    assert "2 requests, prompt only: max_tokens 1]" in " ".join(report.stdout.split())
    rows = json.loads(tuner("report", "--results", prompt_only["root"] / "results",
                            "--format", "json").stdout)
    assert rows and all(r["tg_tps"] is None for r in rows)
    assert ", tg " not in proc.stdout


def test_a_prompt_only_config_verifies_with_prompt_only_requests(prompt_only: dict) -> None:
    # A wide tolerance: the speed comparison itself is test_verify's; 2 shared cores here.
    proc = tuner("verify", prompt_only["out"], "--tolerance", 1000, "--requests", 2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    served_now = next(ln for ln in proc.stdout.splitlines() if ln.startswith("served now: "))
    assert "prompt only: max_tokens 1" in served_now and " gen " not in served_now
    assert "time to first token: " in proc.stdout and "generation: " not in proc.stdout


def test_piped_sweep_output_has_no_cut_lines(prompt_only: dict) -> None:
    proc = prompt_only["proc"]
    assert "…" not in proc.stdout + proc.stderr
    assert "━" not in proc.stderr, "no progress bar when stderr is not a terminal"
    assert any(ln.lstrip().startswith("#") for ln in proc.stderr.splitlines()), proc.stderr


# -- exports carry the decision (item 8) ------------------------------------------------------

@pytest.fixture()
def decided(tmp_path: Path) -> dict:
    """TEST DATA records of one study stored in a real SQLite storage, with a finalist report
    whose winner is not the fastest trial (a tie won by a lighter config), a drift record and
    a trial with GPU clocks (tests/report_data.py)."""
    records = [make_record(i, request_s=1.0 + 0.01 * i, n_batch=64 * (i + 1), n_ubatch=64,
                           study="dec")
               for i in range(4)]
    records = [throttled(r) if r.number == 3 else r for r in records]
    records = [r.model_copy(update={"worker_id": "w-test-1"}) if r.number == 2 else r
               for r in records]
    url = default_storage(tmp_path / "results")
    (tmp_path / "results").mkdir()
    store_records(url, "dec", records)
    fin = finalists_from(records, "dec")
    store = open_study(url, "dec")
    assert store is not None
    store.save_finalists(fin)
    store.save_drift(drift_from(records, "dec", 2))
    return {"results": tmp_path / "results", "finalists": fin}


def test_the_jsonl_export_names_the_same_winner_and_compares_at_one(decided: dict,
                                                                    tmp_path: Path) -> None:
    results, fin = decided["results"], decided["finalists"]
    assert fin.winner_trial != 0, "the fixture's winner is not the fastest trial"
    export = tmp_path / "dec.jsonl"
    proc = tuner("report", "--results", results, "--study", "dec", "--format", "jsonl",
                 "-o", export)
    assert proc.returncode == 0, proc.stderr
    kinds = [next(iter(json.loads(ln))) for ln in export.read_text().splitlines()]
    assert kinds.count("finalist_report") == 1 and kinds.count("worker_drift") == 1
    stored = tuner("report", "--results", results, "--study", "dec").stdout
    back = tuner("report", "--study", export, "--results", tmp_path / "none").stdout
    win = f"winner #{fin.winner_trial} "
    assert win in " ".join(stored.split()) and win in " ".join(back.split()), back
    cmp = tuner("report", "--results", results, "--compare", "dec", export, "--format", "json")
    assert cmp.returncode == 0, cmp.stderr
    ratios = [r["b_over_a"] for r in json.loads(cmp.stdout) if r["b_over_a"] is not None]
    assert ratios and all(r == pytest.approx(1.0) for r in ratios), ratios
    again = tmp_path / "again.jsonl"
    assert tuner("report", "--study", export, "--results", tmp_path / "none", "--format",
                 "jsonl", "-o", again).returncode == 0
    assert again.read_text() == export.read_text(), "an export of an export is the export"


def test_the_json_report_carries_finalists_drift_clocks_and_environment(decided: dict) -> None:
    fin = decided["finalists"]
    rows = {r["trial"]: r for r in json.loads(tuner("report", "--results", decided["results"],
                                                    "--format", "json").stdout)}
    win = rows[fin.winner_trial]["finalist"]
    assert win["winner"] is True and win["decision"] == fin.reason
    assert {"low", "high", "level"} <= set(win["request_seconds"])
    assert all(rows[f.trial]["finalist"]["request_seconds"]["low"] ==
               f.request_seconds.low for f in fin.finalists)
    assert rows[2]["worker_drift"]["worker_id"] == "w-test-1"
    assert rows[3]["clocks"]["end"]["throttle_reasons"] == ["HW_SLOWDOWN"]
    assert all(r["environment"]["hostname"] == "test-host" for r in rows.values())
    assert rows[fin.confirmed[0].trial]["confirmed"]["processes"] == 3


# -- doctor: the last load decides (item 13) ---------------------------------------------------

def test_a_log_of_a_cuda_load_then_a_cpu_build_load_is_judged_by_the_cpu_one(
        tmp_path: Path) -> None:
    cuda = (FIXTURES / "cuda-h100-full-offload.log").read_text()
    cpu = (FIXTURES / "cpu-build-load.log").read_text()
    both = tmp_path / "both.log"
    both.write_text(cuda + cpu)
    proc = tuner("doctor", "--log", both)
    assert proc.returncode == 3, proc.stdout
    assert "Build: CPU only, no CUDA backend" in proc.stdout
    assert "built without CUDA" in proc.stdout
    assert "has CUDA but found no GPU" not in proc.stdout
    assert "GPUs llama.cpp found: none" in proc.stdout
    both.write_text(cpu + cuda)  # the other order: the CUDA load decides, on the GPU
    proc = tuner("doctor", "--log", both)
    assert proc.returncode == 0, proc.stdout
    assert "Verdict: on the GPU as asked" in proc.stdout and "H100" in proc.stdout


# -- a config the confirmation dropped is named (low) ------------------------------------------

def test_a_confirmation_worker_killed_drops_its_config_and_says_so(tiny_model: Path,
                                                                  tmp_path: Path) -> None:
    # The search first; then the same study's finalist stage, where every fresh worker
    # measuring n_batch 32 kills itself (FAKE, tests/workerhooks/faults.py: SIGKILL mid-trial).
    space = write_space(tmp_path / "space.yaml", n_batch=[16, 32], n_ubatch=[16])
    common = ("sweep", "--model", tiny_model, "--device", "cpu", "--space", space,
              "--prompt-tokens", 32, "--gen-tokens", 2, "--n-ctx", 64, "--repetitions", 1,
              "--warmup", 0, "--results", tmp_path / "results", "--out", tmp_path / "p.yaml",
              "--study", "killed", "--served-requests", 0)
    assert tuner(*common, "--finalist-rounds", 0).returncode == 0
    proc = tuner(*common, "--finalist-rounds", 2, "--confirm-top", 2,
                 env=faults.env("sigkill@measure:n_batch=32"))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    stored = open_study(default_storage(tmp_path / "results"), "killed")
    assert stored is not None
    dropped = next(r.number for r in stored.records() if r.spec.context.n_batch == 32)
    flat = " ".join(proc.stdout.split())
    assert f"left out of the finalists: #{dropped} (2 failed)" in flat, proc.stdout
    report = " ".join(tuner("report", "--results", tmp_path / "results").stdout.split())
    assert "(left out" in report and "2 fresh worker(s) did not complete it)" in report
    assert stored.finalists() is not None and "left out" in stored.finalists().reason


def test_a_config_left_out_after_a_failed_worker_is_said(tmp_path: Path) -> None:
    recs: list[TrialRecord] = [make_record(0, request_s=1.0),
                               make_record(1, request_s=1.01, n_batch=1024)]
    script = {0: iter([1.0, None, 1.0, 1.0]), 1: iter([1.01] * 4)}
    opts = FinalistOptions(top=2, confirm=2, confirm_rounds=2, rounds=3, max_rounds=3)
    rep = confirm_and_settle("s", recs, scripted(recs, script, []), opts)
    assert rep is not None and [f.trial for f in rep.finalists] == [1]
    assert "left out of the finalists: #0 (1 failed)" in rep.reason
    # ... and the report's table of the confirmation says it too.
    url = default_storage(tmp_path / "results")
    (tmp_path / "results").mkdir()
    store_records(url, "s", [r.model_copy(update={"study": "s"}) for r in recs])
    store = open_study(url, "s")
    assert store is not None
    store.save_finalists(rep)
    text = " ".join(tuner("report", "--results", tmp_path / "results").stdout.split())
    assert "left out of the finalists: 1 fresh worker(s) did not complete it" in text
