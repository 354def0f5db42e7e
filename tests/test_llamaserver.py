"""llama.cpp's llama-server as the second deploy target, on the CPU with a real llama-server
built from source (`tuner build --variant cpu --server-only`, in builds/ of the checkout or
$TUNER_TEST_BUILDS): the winner of a real SmolLM2 sweep served through it (the CPU-built server
driving the installed package's library through LD_LIBRARY_PATH), its placement proven from its
own log, its deployment written beside the YAML; `tuner verify` of that deployment passes from
another directory and fails with one line for a wrong model, a port in use, a build mismatch and
a speed below tolerance."""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.cli_run import REPO, one_line_error, served_cpu_sweep, tuner
from tests.spaces import write_space
from tuner.builds.catalog import _installed_lib_dir
from tuner.deploy.httpserve import free_port
from tuner.deploy.llamaserver import (
    SAMPLING,
    files_of,
    find_server,
    process_env,
    read_args,
    running,
    server_args,
    wait_healthy,
    with_port,
)
from tuner.deploy.service import read_env_file, render_env_file
from tuner.deploy.servicecompare import lines, raw_of, recommendation, rows
from tuner.machine.cpuload import OtherLoad
from tuner.results.records import FinalistReport, ServedFigures, Stat, TrialRecord
from tuner.results.studystore import default_storage, require_study
from tuner.specs import ContextSettings, ModelSettings, TrialSpec, Workload

BUILDS = Path(os.environ.get("TUNER_TEST_BUILDS", REPO / "builds"))
BUILD_COMMAND = ".venv/bin/tuner build --variant cpu --server-only --if-missing --builds builds"
LOOSE = "1000"
Deployed = tuple[Path, FinalistReport, TrialRecord, str]  # a passing run's speed check, on 2 shared cores (see tests/test_verify.py)


@pytest.fixture(scope="module")
def server_binary() -> Path:
    """The CPU-built llama-server; its absence fails the tests (CI must build it)."""
    found = find_server(None, BUILDS)
    if found is None:
        pytest.fail(f"no llama-server built in {BUILDS}: run `{BUILD_COMMAND}` from the "
                    "checkout (scripts/test.sh does), or set TUNER_TEST_BUILDS")
    return found


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path,
             server_binary: Path) -> Deployed:
    """A real one-setting CPU sweep of SmolLM2 with its finalist and served stages: the winner
    served through llama_cpp.server and then through llama-server by the sweep itself, both
    deployments written (1 thread, so the servers and the client do not fight over 2 cores)."""
    root = tmp_path_factory.mktemp("llsrv")
    space = write_space(root / "space.yaml", n_batch=[32], n_ubatch=[32], n_threads=[1])
    out, proc = served_cpu_sweep(smollm2_path, root, space, BUILDS, served_requests=3)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "llama-server deployment: " in proc.stderr, proc.stderr[-3000:]
    store = require_study(default_storage(root / "results"))
    report = store.finalists()
    assert report is not None and report.llama_server and "error" not in report.llama_server
    record = next(r for r in store.records() if r.number == report.winner_trial)
    return out, report, record, proc.stderr


def copy_of(out: Path, dest: Path, *, args: Callable[[list[str]], list[str]] | None = None,
            side: Callable[[dict[str, Any]], None] | None = None,
            env: Callable[[dict[str, str]], None] | None = None) -> Path:
    """The llama-server deployment's three files copied to ``dest``, edited on purpose."""
    dest.mkdir(parents=True, exist_ok=True)
    src, new = files_of(out), files_of(dest / "production.yaml")
    argv = read_args(src["args"])
    new["args"].write_text("\n".join(args(argv) if args else argv) + "\n")
    data = json.loads(src["json"].read_text())
    if side:
        side(data)
    new["json"].write_text(json.dumps(data))
    variables = read_env_file(src["env"])
    if env:
        env(variables)
    new["env"].write_text(render_env_file(variables))
    return new["args"]


def _replace(argv: list[str], flag: str, value: str) -> list[str]:
    i = argv.index(flag)
    return argv[: i + 1] + [value] + argv[i + 2:]


def test_sampling_is_llama_cpp_servers_default() -> None:
    from llama_cpp.server.types import CreateCompletionRequest

    fields = CreateCompletionRequest.model_fields
    assert {k: fields[k].default for k in SAMPLING} == SAMPLING


def test_every_setting_becomes_a_flag() -> None:
    spec = TrialSpec(model=ModelSettings(n_gpu_layers=-1),
                     context=ContextSettings(n_batch=2048, n_ubatch=1024, flash_attn=True,
                                             type_k="q8_0", type_v="q8_0"))
    args = server_args(spec, Workload(prompt_tokens=2048, gen_tokens=128), "/m/x.gguf", 4)
    line = " ".join(args)
    for part in ("-m /m/x.gguf", "--fit off", "-np 1", "-ngl all", "-sm layer", "-b 2048",
                 "-ub 1024", "-fa on", "-ctk q8_0", "-ctv q8_0", "-t 4", "-tb 4", "-c 2176",
                 "--cache-ram 0", "--host 127.0.0.1 --port 8080"):
        assert part in line, part


def test_the_sidecar_keeps_what_else_kept_the_cpus_busy(deployed: Deployed) -> None:
    """The sweep's sidecar, its llama-server deployment and the study's stored decision hold
    other processes' share of the CPUs from the search's start to their write
    (tuner/machine/cpuload.py), read back as verify and report read them."""
    sidecar = json.loads((deployed[0].parent / "production.tuner.json").read_text())
    ours = json.loads(files_of(deployed[0])["json"].read_text())
    for side in (sidecar, ours):
        load = OtherLoad.stored(side)
        assert load is not None, side.get("machine_load")
        assert load.n_cpu == os.cpu_count() and load.seconds > 0 and 0.0 <= load.share <= 1.0
    # and the study's stored decision, which `tuner report` reads
    stored = deployed[1].machine_load
    assert stored is not None and stored.n_cpu == os.cpu_count() and stored.seconds > 0


def test_the_deployment_is_written_beside_the_yaml(deployed: Deployed,
                                                   server_binary: Path) -> None:
    out, report, _, _ = deployed
    files = files_of(out)
    args = read_args(files["args"])
    assert "--fit" in args and args[args.index("--fit") + 1] == "off"
    assert args[args.index("-t") + 1] == "1" and args[args.index("-b") + 1] == "32"
    env = read_env_file(files["env"])
    assert env["LD_LIBRARY_PATH"] == str(_installed_lib_dir().absolute())
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    data = json.loads(files["json"].read_text())
    assert data["binary"] == str(server_binary)
    fig = ServedFigures.model_validate(data["served"])
    assert fig.source == "llama-server" and fig.requests == 3 and fig.gen_tps is not None
    assert report.llama_server == data["served"]
    # Its raw figures are the YAML sidecar's: the finalists' re-measurement, its source named.
    sidecar = json.loads((out.parent / "production.tuner.json").read_text())
    assert data["raw"] == sidecar["figures"]
    assert data["raw"]["source"].startswith("finalists: mean of 1 fresh processes")


def test_both_services_side_by_side(deployed: Deployed) -> None:
    out, report, record, notes = deployed
    win = next(f for f in report.finalists if f.trial == report.winner_trial)
    assert win.served is not None and "error" not in win.served
    table = rows(win.served, report.llama_server, raw_of(report, record.number))
    assert [r.service for r in table] == ["llama_cpp.server", "llama-server"]
    assert all(r.figures is not None and r.gen_share and r.ttft_share for r in table)
    faster = min(table, key=lambda r: r.figures.request_s.median)  # type: ignore[union-attr]
    rec = recommendation(table)
    assert rec is not None and rec.startswith(f"recommended: {faster.service} (")
    assert "Python API" in rec and "another process" in rec
    text = lines(table)
    assert text[0].startswith("llama_cpp.server: ttft ") and "of raw)" in text[0]
    assert text[1].startswith("llama-server: ttft ") and text[2] == rec
    for line in text:  # the sweep printed them, and the report shows them
        assert line in notes
    shown = tuner("report", "--results", out.parent.parent / "results")
    assert shown.returncode == 0, shown.stderr
    assert "services" in shown.stdout and "recommended: " in shown.stdout
    html = out.parent / "report.html"
    shown = tuner("report", "--results", out.parent.parent / "results", "--format", "html",
                  "-o", html)
    assert shown.returncode == 0, shown.stderr
    page = html.read_text()
    assert "The winner served over HTTP by each deploy target" in page
    assert "<td>llama-server</td>" in page.replace(" class=num", "") and "recommended: " in page
    assert lines(rows(None, report.llama_server, None))[0] == (
        "llama_cpp.server: not served: no figures")


def test_a_recommendation_within_the_spread_says_so() -> None:
    # run 35's served phase (H200, a 14B at 43 of 49 layers): apart, the faster one is named
    apart = recommendation(rows(_served([5.100, 5.712], "server"), _served([5.865, 5.841]),
                                None))
    assert apart is not None and apart.startswith("recommended: llama_cpp.server (5.406 s ")
    assert "spread" not in apart
    # the faster median's slowest request above the other's fastest: the costs decide
    within = recommendation(rows(_served([5.100, 5.900], "server"), _served([5.865, 5.841]),
                                 None))
    assert within is not None and within.startswith("recommended: llama_cpp.server (5.500 s ")
    assert ("within their spread (requests 5.100-5.900 s against 5.841-5.865 s overlap): "
            "either serves as fast, so what each costs decides") in within


def test_verify_passes_from_another_directory(deployed: Deployed,
                                              tmp_path: Path) -> None:
    out = deployed[0]
    proc = tuner("verify", files_of(out)["args"], "--tolerance", LOOSE, "--requests", 3,
                 cwd=tmp_path, env={"LLAMA_ARG_N_GPU_LAYERS": "0", "LLAMA_ARG_CTX_SIZE": "8"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert "placement: proven: 31/31 layers on CPU, KV cache on CPU" in text
    # The CPU-built server ran on the installed package's library (LD_LIBRARY_PATH before
    # its RUNPATH): one server binary drives any build's library.
    library = next(ln for ln in text.splitlines() if ln.startswith("library: "))
    assert Path(library.removeprefix("library: ")).resolve().parent == (
        _installed_lib_dir().resolve())
    assert "[llama-server, 3 requests]" in text
    assert "reference: the deployment's llama-server served figures" in text
    assert "verified: the service runs what was measured" in text
    log = out.with_name("production.llama-server.verify.log").read_text(errors="replace")
    assert "load_tensors" in log


def test_the_yaml_with_the_option_verifies_llama_server(deployed: Deployed
                                                        ) -> None:
    out = deployed[0]
    with socket.socket() as busy:  # also: a port in use is one error, exit 2
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = tuner("verify", out, "--llama-server", "--port", port)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"port {port} is in use on 127.0.0.1" in one_line_error(proc)


def test_a_missing_model_is_one_error(deployed: Deployed,
                                      tmp_path: Path) -> None:
    missing = tmp_path / "gone.gguf"
    args = copy_of(deployed[0], tmp_path / "d", args=lambda a: _replace(a, "-m", str(missing)))
    proc = tuner("verify", args)
    assert proc.returncode == 2
    assert f"model {missing} named in {args} not found" in one_line_error(proc)


def test_another_model_than_measured_is_one_error(deployed: Deployed,
                                                  tmp_path: Path, tiny_model: Path) -> None:
    args = copy_of(deployed[0], tmp_path / "d", args=lambda a: _replace(a, "-m", str(tiny_model)))
    proc = tuner("verify", args)
    assert proc.returncode == 2
    assert f"model {tiny_model} named in {args} is not the model measured" in one_line_error(proc)


def test_another_library_than_measured_is_a_mismatch(deployed: Deployed,
                                                     tmp_path: Path, server_binary: Path) -> None:
    # The environment file now puts the server's own build first: the server runs, but not on
    # the library the sweep measured.
    own = server_binary.parent.parent / "lib"
    args = copy_of(deployed[0], tmp_path / "d",
                   env=lambda v: v.update(LD_LIBRARY_PATH=str(own)))
    proc = tuner("verify", args)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    line = one_line_error(proc)
    assert line.startswith("error: build mismatch: llama-server loaded ")
    assert str(own.resolve()) in line and str(_installed_lib_dir()) in line


def test_speed_below_tolerance_fails(deployed: Deployed,
                                     tmp_path: Path) -> None:
    def faster(side: dict[str, Any]) -> None:
        s = side["served"]
        s["ttft_s"] = _scaled(s["ttft_s"], 0.1)
        s["gen_tps"] = _scaled(s["gen_tps"], 10.0)

    args = copy_of(deployed[0], tmp_path / "d", side=faster)
    proc = tuner("verify", args, "--requests", 2)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    line = one_line_error(proc)
    assert "served speed outside the 10% tolerance of the served figures" in line
    assert "placement: proven" in proc.stdout and "OUTSIDE 10%" in proc.stdout


def test_no_deployment_is_one_error(tmp_path: Path) -> None:
    proc = tuner("verify", tmp_path / "production.llama-server.args")
    assert proc.returncode == 2
    assert "no llama-server deployment at" in one_line_error(proc)


def test_a_missing_binary_is_one_error(deployed: Deployed,
                                       tmp_path: Path) -> None:
    args = copy_of(deployed[0], tmp_path / "d",
                   side=lambda s: s.update(binary=str(tmp_path / "nope" / "llama-server")))
    proc = tuner("verify", args)
    assert proc.returncode == 3
    assert "no llama-server at" in one_line_error(proc)
    assert "tuner build --variant cpu --server-only" in proc.stderr


def _scaled(stat: dict[str, Any], k: float) -> dict[str, Any]:
    return Stat.of([x * k for x in stat["samples"]]).model_dump()


def test_the_build_command_is_documented() -> None:
    assert BUILD_COMMAND in (REPO / "docs" / "llama-server.md").read_text()
    assert shutil.which("cmake"), "CI builds llama-server from source: cmake must be there"


def test_the_ci_build_command_is_a_no_op_once_built(server_binary: Path) -> None:
    proc = tuner("build", "--variant", "cpu", "--server-only", "--if-missing", "--builds",
                 server_binary.parent.parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("already built cpu: ") and str(server_binary) in proc.stdout


def test_url_checks_a_running_llama_server(deployed: Deployed, tmp_path: Path) -> None:
    files = files_of(deployed[0])
    data = json.loads(files["json"].read_text())
    port = free_port(None)
    args = with_port(read_args(files["args"]), "127.0.0.1", port)
    log = tmp_path / "server.log"
    with running(Path(data["binary"]), args, process_env(read_env_file(files["env"])), tmp_path,
                 log) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(proc, base, log, 120)
        proc_ = tuner("verify", files["args"], "--url", base, "--tolerance", LOOSE,
                      "--requests", 2)
    assert proc_.returncode == 0, proc_.stdout + proc_.stderr
    assert "placement: not checked (--url" in proc_.stdout
    assert f"service: {base}" in proc_.stdout and "[llama-server, 2 requests]" in proc_.stdout


def test_the_server_settings_tried_are_recorded(deployed: Deployed, server_binary: Path) -> None:
    """The sweep tried each knob this llama-server has (backend sampling) on the winner: its
    figures and greedy check are in the deployment's JSON and its line in the sweep's output,
    and the args carry its flag exactly when it was kept."""
    from tuner.deploy.llamaserverknobs import KNOBS, Tried, supported

    out, _, _, notes = deployed
    env = process_env({"LD_LIBRARY_PATH": str(_installed_lib_dir())})
    assert [k.name for k in supported(server_binary, env)] == [k.name for k in KNOBS]
    assert supported(REPO / "no-such-llama-server", env) == []
    data = json.loads(files_of(out)["json"].read_text())
    tried = [Tried.model_validate(t) for t in data["knobs"]]
    assert [t.name for t in tried] == ["backend sampling"]
    t = tried[0]
    assert (t.served is not None and t.same_greedy is not None) or t.error, t
    assert ("llama-server backend sampling (--backend-sampling, the sampler chain in the "
            "model's compute graph, on its device): ") in notes
    assert t.why in notes
    assert ("--backend-sampling" in read_args(files_of(out)["args"])) == t.kept
    # The report says what llama-server runs with, exactly when a setting was kept.
    report = require_study(default_storage(out.parent.parent / "results")).finalists()
    assert report is not None and report.llama_server_flags == (["--backend-sampling"]
                                                               if t.kept else [])
    shown = tuner("report", "--results", out.parent.parent / "results")
    assert shown.returncode == 0, shown.stderr
    assert ("llama-server runs with --backend-sampling" in shown.stdout) == t.kept


def _served(request_s: list[float],
            source: Literal["server", "llama-server"] = "llama-server") -> ServedFigures:
    return ServedFigures(source=source, requests=len(request_s), prompt_tokens=32,
                         gen_tokens=8, ttft_s=Stat.of([0.1] * len(request_s)),
                         gen_tps=Stat.of([100.0] * len(request_s)), request_s=Stat.of(request_s))


def test_a_knob_is_kept_only_when_faster_and_the_same_answer() -> None:
    from tuner.deploy.llamaserverknobs import KNOBS, judge

    knob, plain = KNOBS[0], _served([1.00, 1.02, 1.04])
    fast, close = _served([0.80, 0.81, 0.82]), _served([0.99, 1.01, 1.05])
    assert judge(knob, fast, "abc", plain, "abc").kept
    kept = judge(knob, fast, "abc", plain, "abc").why
    assert kept.startswith("request time 0.794x, time to first token 1.000x") and "kept" in kept
    slower = judge(knob, close, "abc", plain, "abc")
    assert not slower.kept and "not faster beyond the spreads" in slower.why
    changed = judge(knob, fast, "abd", plain, "abc")
    assert not changed.kept and changed.same_greedy is False and "differs" in changed.why


def test_the_kept_settings_are_said_beside_the_services() -> None:
    from tuner.deploy.servicecompare import flags_line

    a = _served([1.0, 1.01, 1.02])
    plain = lines(rows(a, a, None))
    kept = lines(rows(a, a, None), ["--backend-sampling"])
    assert flags_line([]) is None and not any("runs with" in ln for ln in plain)
    assert kept[2] == ("llama-server runs with --backend-sampling: kept by the served phase, "
                       "faster with the same greedy answer (tuner/deploy/llamaserverknobs.py)")
    assert kept[:2] == plain[:2] and kept[3:] == plain[2:]
