"""A mixture of experts that does not fit the GPU whole: every layer on the GPU with the expert
weights of the first K layers in host memory (the setting ``n_cpu_moe``, llama-server's
``--n-cpu-moe``, what llama.cpp's own fit does for such a model). Shown here on the CPU with a
real qwen3moe GGUF file: the worker's tensor overrides in the real load log, proven against
what was asked (and an edited log refused); a sweep's config served through the real
llama_cpp.server by tuner's launcher and through the real llama-server, each load proven; and
the partial-offload search pairing K with full offload under a FAKE GPU budget (no GPU here)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest

from tests.cli_run import one_setting_served_sweep, tuner
from tests.spaces import write_space
from tests.test_llamaserver import BUILDS, LOOSE
from tuner.deploy.llamaserver import server_args, server_env
from tuner.deploy.prodconfig import launch_command
from tuner.deploy.serverlaunch import MODULE, server_module
from tuner.deploy.service import read_env_file
from tuner.evidence.placement import Expectation, experts_reasons, parse_load_log, verify
from tuner.models import memplan
from tuner.models.archgen import write_qwen3moe
from tuner.models.memplan import MIB, Budget, Context
from tuner.search import offload
from tuner.search.space import default_space, grid
from tuner.specs import ContextSettings, ModelSettings, TrialSpec, Workload

N_LAYER = 4
OVERRIDE = re.compile(r"^tensor (blk\.(\d+)\.ffn_\w+_exps\.weight) .*overridden to (\S+)$", re.M)


@pytest.fixture(scope="module")
def moe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_qwen3moe(tmp_path_factory.mktemp("moe") / "qwen3moe.gguf", n_layer=N_LAYER)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, moe: Path) -> tuple[Path, str]:
    """A real one-setting CPU sweep at n_cpu_moe 2, served through llama_cpp.server (by the
    launcher) and llama-server, both deployments written."""
    return one_setting_served_sweep(moe, tmp_path_factory.mktemp("moesweep"), BUILDS,
                                    n_cpu_moe=[2])


def test_the_sweep_proves_serves_and_deploys_experts_on_the_host(swept: tuple[Path, str]) -> None:
    out, text = swept
    assert "cpu-moe 2" in text
    assert "not verified" not in text, text[-3000:]
    # The config is llama_cpp.server's own; the count lives in the service's environment, and
    # the launch line starts tuner's launcher, which applies it
    assert "n_cpu_moe" not in out.read_text()
    env = read_env_file(out.with_name("production.env"))
    assert env["TUNER_N_CPU_MOE"] == "2"
    side = json.loads(out.with_name("production.tuner.json").read_text())
    assert f"-m {MODULE} --config_file" in side["launch"]
    # The served phase's llama_cpp.server and llama-server both placed (and proved) it
    args = out.with_name("production.llama-server.args").read_text().splitlines()
    assert args[args.index("--n-cpu-moe") + 1] == "2"
    assert "llama-server deployment: " in text, text[-3000:]


def test_verify_starts_the_launcher_and_proves_the_placement(swept: tuple[Path, str]) -> None:
    """``tuner verify`` of both written deployments: each real server, started as its
    deployment says, loads with the first two layers' experts on the host, and its log proves
    it."""
    out, _ = swept
    for target in ("production.yaml", "production.llama-server.args"):
        proc = tuner("verify", out.with_name(target), "--tolerance", LOOSE, "--requests", 2,
                     cwd=out.parent)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "placement: proven: 5/5 layers on CPU, experts of layers 0-1 on CPU" in \
            proc.stdout, proc.stdout


def _load_log(model: Path, n_cpu_moe: int, tmp: Path) -> str:
    """The real load log of a Llama() made after the launcher's hook (as the served phase's
    worker and the deployed server make it)."""
    import subprocess
    import sys

    code = ("import sys; from tuner.worker.llamaparams import hold_on_host\n"
            f"hold_on_host({n_cpu_moe}, None)\n"
            "from llama_cpp import Llama\n"
            "Llama(model_path=sys.argv[1], n_ctx=64, n_gpu_layers=0, verbose=True)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True,
                          text=True, timeout=120, check=False, cwd=tmp,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


def test_a_real_load_moves_exactly_the_first_layers_experts(moe: Path, tmp_path: Path) -> None:
    text = _load_log(moe, 3, tmp_path)
    moved = OVERRIDE.findall(text)
    # gate, up and down of layers 0-2, nothing of layer 3
    assert sorted({int(il) for _, il, _ in moved}) == [0, 1, 2] and len(moved) == 9
    assert all(buft.startswith("CPU") for _, _, buft in moved)
    ev = parse_load_log(text)
    assert len(ev.overridden) == 9
    verdict = verify(ev, Expectation(device="cpu", n_cpu_moe=3))
    assert verdict.verified, verdict.reasons
    # The same log does not prove another count, nor none
    assert experts_reasons(ev, 2) == ["the expert weights of layers 0-2 in host memory; the "
                                      "trial asked for those of layers 0-1"]
    assert experts_reasons(ev, 0) == ["the expert weights of 3 layers in host memory; the "
                                      "trial asked for none"]
    plain = parse_load_log(_load_log(moe, 0, tmp_path))
    assert plain.overridden == {} and experts_reasons(plain, 0) == []
    assert experts_reasons(plain, 2)[0].startswith("no expert weights overridden")


def test_edited_logs_are_refused(moe: Path, tmp_path: Path) -> None:
    """EDITED LOGS: the real load's override lines with a layer removed, a tensor sent to a
    GPU, a tensor that is no expert weight."""
    text = _load_log(moe, 3, tmp_path)
    gap = re.sub(r"^tensor blk\.1\..*\n", "", text, flags=re.M)
    assert experts_reasons(parse_load_log(gap), 3) == [
        "the expert weights of layers 0, 2 in host memory; the trial asked for those of "
        "layers 0-2"]
    cuda = text.replace("overridden to CPU", "overridden to CUDA0", 1)
    assert "not to host memory" in experts_reasons(parse_load_log(cuda), 3)[0]
    other = text + "tensor blk.3.attn_q.weight (0 MiB f32) buffer type overridden to CPU\n"
    verdict = verify(parse_load_log(other), Expectation(device="cpu", n_cpu_moe=3))
    assert verdict.reasons == [
        "tensor blk.3.attn_q.weight overridden to CPU: the trial asked no override of it"]


def test_the_service_is_started_by_the_launcher_only_when_it_needs_it() -> None:
    assert server_module({}) == "llama_cpp.server"
    assert server_module({"TUNER_N_CPU_MOE": "0"}) == "llama_cpp.server"
    assert server_module({"TUNER_N_CPU_MOE": "4"}) == MODULE
    assert "-m llama_cpp.server --config_file" in launch_command(Path("p.yaml"), {})
    spec = TrialSpec(model=ModelSettings(n_cpu_moe=4), context=ContextSettings())
    args = server_args(spec, Workload(), "m.gguf", 2)
    assert args[args.index("--n-cpu-moe") + 1] == "4" and "-ngl" in args
    # llama-server takes the flag; the launcher's variable is not in its environment
    assert "TUNER_N_CPU_MOE" not in server_env(spec, "/lib", "m.gguf")


def test_the_launcher_refuses_a_bad_count_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", MODULE, "--config_file", "x.yaml"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "TUNER_N_CPU_MOE": "many",
                               "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: TUNER_N_CPU_MOE='many' is not a count of layers from 0 to 65536"]


def _three_layers_experts_fit(moe: Path) -> tuple[memplan.ModelLayout, Budget,
                                                  memplan.MemoryPlan]:
    """A FAKE budget (no GPU here) between the file's full offload and its full offload with
    three layers' experts on the host (n_ctx 256, n_ubatch 256), and the plan in it."""
    layout = memplan.read_layout(moe)
    ctx = Context(n_ctx=256, n_ubatch=256)
    three = memplan.place(layout, -1, dataclasses.replace(ctx, experts_on_host=3)).gpu.total
    budget = Budget(free_mib=(three + 64 * 1024) / MIB, overhead_mib=0, margin_mib=0)
    return layout, budget, memplan.make_plan(layout, 256, budget)


def test_the_search_pairs_experts_on_the_host_with_full_offload(moe: Path) -> None:
    """FAKE budget (no GPU here): between the file's full offload and its full offload with
    two layers' experts on the host. The search holds every layer on the GPU with K near the
    fewest that fit (and one fewer, the probe), and the layer counts near the boundary without
    experts moved; the plan refuses K below the probe."""
    layout, budget, plan = _three_layers_experts_fit(moe)
    wl = Workload(prompt_tokens=32, gen_tokens=8, n_ctx=256)
    assert not plan.fits_full and ("f16/f16", 3) in plan.experts_host
    op = offload.OffloadPlan(plan=plan, layers=offload.search_layers(plan),
                             experts=offload.search_experts(plan))
    assert op.layers and 2 in op.experts and 3 in op.experts and 1 not in op.experts
    # Whole layers only at the most that fit and the probe past it: none below (each moves
    # attention and cache to the host besides the experts)
    tops = {r.most_layers for r in plan.rows}
    assert set(op.layers) <= tops | {min(t + 1, layout.n_offloadable) for t in tops}
    space = default_space("cuda", ["default"], op.layers, experts=op.experts)
    specs = offload.keep_fitting(op, grid(space, "cuda", wl, lambda *_: True), wl)
    moved = [s for s in specs if s.model.n_cpu_moe]
    assert moved and all(s.model.n_gpu_layers == -1 for s in moved)
    kept = [s for s in specs if not s.model.n_cpu_moe]
    assert kept and all(s.model.n_gpu_layers >= 0 for s in kept)
    # Each kept K is at most one below the fewest that fits its own context
    for s in moved:
        need = memplan.fewest_experts_on_host(layout, budget, offload.spec_context(s, wl))
        assert need is not None and s.model.n_cpu_moe >= need - 1
    below = TrialSpec(model=ModelSettings(n_cpu_moe=1),
                      context=ContextSettings(n_batch=2048, n_ubatch=256))
    ok, why = offload.tried_by_plan(layout, budget, below, wl)
    assert not ok and why.startswith("the fewest layers' experts on the host that fit: 3")


def test_a_load_with_fewer_experts_on_the_host_walks_the_fewest_down(moe: Path) -> None:
    """FAKE budget (no GPU here): the probe, one layer's experts fewer on the host than the
    plan fits, loaded and ran; the plan's fewest moves to it and the next fewer is searched as
    the probe."""
    layout, budget, plan = _three_layers_experts_fit(moe)
    wl = Workload(prompt_tokens=32, gen_tokens=8, n_ctx=256)
    ctx = Context(n_ctx=256, n_ubatch=256)
    op = offload.OffloadPlan(plan=plan, layers=offload.search_layers(plan),
                             experts=offload.search_experts(plan))
    assert 2 in op.experts and 1 not in op.experts
    probe = TrialSpec(model=ModelSettings(device="cuda", n_gpu_layers=-1, n_cpu_moe=2),
                      context=ContextSettings(n_batch=2048, n_ubatch=256))
    walked, line = offload.walk_up(op, probe, wl) or (None, "")
    assert walked is not None and 1 in walked.experts
    assert memplan.fewest_experts_on_host(layout, walked.plan.budget, ctx) == 2
    assert line.startswith("memory plan: n_cpu_moe 2 loaded and ran where the plan gave")
    assert f"searching n_cpu_moe {list(walked.experts)} (was {list(op.experts)})" in line


def test_the_report_says_why_the_experts_stayed_on_the_host(moe: Path) -> None:
    """TEST DATA records (tests/records_factory.py) of the qwen3moe file: n_cpu_moe 3 won,
    n_cpu_moe 2 ran out of memory, 2 layers on the GPU measured slower."""
    from tests.records_factory import make_record
    from tuner.reports.overview import overview
    from tuner.results.records import TrialState

    def rec(n: int, ngl: int, k: int, **kw: object) -> object:
        r = make_record(n, n_gpu_layers=ngl, n_cpu_moe=k, model_path=str(moe),
                        **kw)  # type: ignore[arg-type]
        return r.model_copy(update={"placement": {"total_layers": N_LAYER + 1}})
    records = [rec(0, -1, 3, request_s=1.0), rec(1, 2, 0, request_s=1.7),
               rec(2, -1, 2, state=TrialState.INFEASIBLE)]
    text = "\n".join(overview("s", records).offload)  # type: ignore[arg-type]
    assert text.startswith("every layer on the GPU, the expert weights of its first 3 in host "
                           "memory (n_cpu_moe 3); measured MiB: ")
    assert "memory plan MiB: GPU model " in text
    assert "fewer experts on the host did not fit: n_cpu_moe 2 infeasible" in text
    # The layer-offload winner, against the experts-on-host trial that ran
    lines = overview("s", [rec(0, 2, 0, request_s=1.0), rec(1, -1, 3, request_s=1.4)]).offload  # type: ignore[list-item]
    assert "more on the GPU measured slower: #1 n_cpu_moe 3 1.400 s/request against 1.000 s" \
        in "\n".join(lines)


def test_the_op_proof_allows_the_nodes_beside_the_experts_on_the_host() -> None:
    """EDITED FIXTURE: the real H100 scheduler report (a dense model, every node on CUDA0) with
    layer 0's feed-forward products moved to a CPU split, as the scheduler runs an expert
    product whose weights are in host memory. With the first layer's experts asked on the host
    they are expected; without, or in a layer past K, they are not."""
    import gzip

    from tests.opreport_edits import move_to_cpu_split
    from tuner.evidence.opplacement import check_ops

    fixture = Path(__file__).parent / "fixtures" / "cuda-h100-sched-debug.log.gz"
    text = gzip.decompress(fixture.read_bytes()).decode()
    moved = move_to_cpu_split(move_to_cpu_split(text, "ffn_up-0"), "ffn_gate-0")
    # and an unnamed node of layer 0, known by its source ("Vcur-0 (reshaped)")
    moved = move_to_cpu_split(moved, "node_9")
    asked = check_ops(moved, "cuda", experts_on_host=1)
    assert asked.verified is True, asked.reasons
    assert "3 nodes of layer 0 on the host beside their experts, as asked" in asked.summary
    assert check_ops(moved, "cuda").verified is False
    later = move_to_cpu_split(moved, "ffn_up-1")
    refused = check_ops(later, "cuda", experts_on_host=1)
    assert refused.verified is False and refused.off_device_count == 1
    assert check_ops(later, "cuda", experts_on_host=2).verified is True


def _with_overrides(layers: list[int]) -> str:
    """EDITED FIXTURE: the real H100 full-offload load log with the override lines llama.cpp
    prints for ``--n-cpu-moe`` (expert tensors of ``layers`` to the CPU) after its "loading
    model tensors" line."""
    log = (Path(__file__).parent / "fixtures" / "cuda-h100-full-offload.log").read_text()
    lines = "".join(f"tensor blk.{il}.ffn_{part}_exps.weight (96 MiB q4_K) buffer type "
                    "overridden to CPU_REPACK\n" for il in layers for part in ("gate", "up", "down"))
    head, sep, tail = log.partition("loading model tensors")
    line_end = tail.index("\n") + 1
    return head + sep + tail[:line_end] + lines + tail[line_end:]


def test_doctor_takes_a_users_experts_on_the_host_as_asked() -> None:
    from tuner.evidence.doctor import diagnose

    ok = diagnose(_with_overrides([0, 1]))
    assert ok.exit_code == 0, ok.lines
    assert any("experts of layers 0-1 on CPU_REPACK" in line for line in ok.lines)
    gap = diagnose(_with_overrides([0, 2]))
    assert gap.exit_code == 3
    assert any("the expert weights of layers 0, 2 in host memory" in line for line in gap.lines)


@pytest.mark.parametrize(("which", "count", "said"), [
    ("dense", 2, "has no expert tensors (*_exps): it is not a mixture of experts"),
    ("moe", N_LAYER + 1, f"qwen3moe.gguf has {N_LAYER} layers"),
])
def test_experts_the_model_cannot_have_are_refused_in_one_line(
        which: str, count: int, said: str, moe: Path, smollm2_path: Path,
        tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", n_cpu_moe=[count], n_batch=[32],
                        n_ubatch=[32])
    results = tmp_path / "results"
    proc = tuner("sweep", "--model", smollm2_path if which == "dense" else moe, "--device",
                 "cpu", "--space", space, "--prompt-tokens", 32, "--gen-tokens", 8, "--n-ctx",
                 64, "--results", results, "--out", tmp_path / "p.yaml", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert said in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "p.yaml").exists()


def test_the_host_must_hold_the_most_experts_searched(moe: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """FAKE host memory: the share checked before any trial is the larger of the fewest layers
    searched and the most experts on the host searched."""
    from tuner.errors import EnvironmentUnfit

    layout = memplan.read_layout(moe)
    plan = memplan.make_plan(layout, 256, Budget(free_mib=1.0))
    wl = Workload(prompt_tokens=32, gen_tokens=8, n_ctx=256)
    op = offload.OffloadPlan(plan=plan, layers=(N_LAYER,), experts=(1, N_LAYER))
    experts = memplan.place(layout, -1, Context(n_ctx=256, experts_on_host=N_LAYER)).host.total
    layers = memplan.place(layout, N_LAYER, Context(n_ctx=256)).host.total
    assert experts > layers
    monkeypatch.setenv(offload.FAKE_HOST_ENV, str(experts / MIB - 0.01))
    with pytest.raises(EnvironmentUnfit, match=f"with the experts of {N_LAYER} layers in host "
                                               "memory, it needs"):
        offload.check_host(op, wl)
    monkeypatch.setenv(offload.FAKE_HOST_ENV, str(experts / MIB + 1))
    assert offload.check_host(op, wl).startswith(
        f"memory plan: with the experts of {N_LAYER} layers in host memory, the host holds")


def test_the_sweeps_first_lines_name_both_searches(moe: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """FAKE GPU and host memory: what the sweep prints before any trial for a mixture of
    experts that does not fit."""
    from tuner.worker.gpumem import FAKE_FREE_ENV

    layout = memplan.read_layout(moe)
    ctx = Context(n_ctx=256, n_ubatch=256)
    three = memplan.place(layout, -1, dataclasses.replace(ctx, experts_on_host=3)).gpu.total
    monkeypatch.setenv(FAKE_FREE_ENV, str((three + 64 * 1024) / MIB + 900 + 256))
    monkeypatch.setenv(offload.FAKE_HOST_ENV, "100000")
    op, lines = offload.prepare(layout, Workload(prompt_tokens=32, gen_tokens=8, n_ctx=256),
                                None)
    assert op is not None and op.partial and op.experts
    text = "\n".join(lines)
    assert (f"memory plan: searching n_gpu_layers {list(op.layers)} (the most that fit per "
            "cache type and one more to probe the plan, a layer further each time such a probe "
            "loads)") in text
    assert f"and every layer on the GPU with n_cpu_moe {list(op.experts)}" in text
    assert "as llama-server's --n-cpu-moe K places them (the setting n_cpu_moe)" in text


FAKE_BENCH = '''#!{python}
"""FAKE llama-bench (no GPU here): loads with -ncmoe {fewest} or more (every layer on the GPU)
or up to {most} layers without; logs its arguments; prints llama-bench's JSON rows."""
import json, sys
a = sys.argv[1:]
open({log!r}, "a").write(" ".join(a) + "\\n")
ngl = int(a[a.index("-ngl") + 1])
k = int(a[a.index("-ncmoe") + 1]) if "-ncmoe" in a else None
ok = k >= {fewest} if k is not None else ngl <= {most}
if not ok:
    sys.exit(1)
print(json.dumps([{{"avg_ts": 100.0 + (k or 0)}}]))
'''


def test_the_benchmarks_compare_measures_experts_on_the_host(
        swept: tuple[Path, str], moe: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/partial_offload.py compare, as the next GPU lease runs it, on the real
    sweep's study (winner n_cpu_moe 2) with a FAKE llama-bench and llama-fit-params and a FAKE
    free GPU memory: llama-bench's fewest -ncmoe against the plan's, and llama-bench at the
    winner's K - 1, K and K + 1, in its table (a crash here would cost a lease)."""
    import stat
    import subprocess
    import sys

    from tests.test_partial_offload_bench import README_ANSWER, _fake_fit

    out, _ = swept
    bench = tmp_path / "bench"
    log = tmp_path / "bench.log"
    exe = bench / "bin" / "llama-bench"
    exe.parent.mkdir(parents=True)
    exe.write_text(FAKE_BENCH.format(python=sys.executable, log=str(log), fewest=2, most=3))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    _fake_fit(bench, README_ANSWER + "\n")
    layout = memplan.read_layout(moe)
    ctx = Context(n_ctx=2176, n_ubatch=512)
    three = memplan.place(layout, -1, dataclasses.replace(ctx, experts_on_host=3)).gpu.total
    walked = ("memory plan: n_cpu_moe 2 loaded and ran where the plan gave 9 MiB on the GPU "
              "more than its 8 MiB usable: ...")  # TEST DATA: the sweep's walk line
    sweep_log = tmp_path / "sweep.log"
    sweep_log.write_text(f"trial 1 ...\n{walked}\nsweep exit 0 after 9 s\n")
    env = {**os.environ, "TUNER_FAKE_GPU_FREE_MIB": str(three / MIB + 900 + 256 + 0.05),
           "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.run([sys.executable, str(Path(__file__).parent.parent / "benchmarks" /
                                               "partial_offload.py"), "compare", "--model",
                           str(moe), "--results", str(out.parent.parent / "results"),
                           "--bench", str(bench), "--out", str(tmp_path / "out"),
                           "--sweep-log", str(sweep_log)],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "experts on the host, kv f16: the plan's fewest n_cpu_moe 3, llama-bench's " \
           "fewest 2" in proc.stdout, proc.stdout
    ks = [line.split("-ncmoe ")[1].split()[0] for line in log.read_text().splitlines()
          if "-ncmoe" in line and "-n 1 " not in line + " "]
    assert {"1", "2", "3"} <= set(ks), ks
    # the CPU sweep's winner has n_gpu_layers 0 (a CUDA one's -1 is benched at all 5)
    assert "| 0 (tuner's winner) | 2 | f16 | 0 | 32 | mmap |" in proc.stdout, proc.stdout
    data = json.loads((tmp_path / "out" / "partial-offload.json").read_text())
    assert data["tuner_best"]["n_cpu_moe"] == 2 and data["tuner_best"]["use_mmap"] is True
    # the winner in its own load mode, then in the other (what the search's choice was worth)
    lines = log.read_text().splitlines()
    assert any("-ncmoe 2" in line and "-lm mmap" in line for line in lines)
    assert any("-ncmoe 2" in line and "-lm none" in line for line in lines)
    assert data["llama_bench_at_winner_load_none"] is not None
    assert "llama-bench at tuner's winner, the other load mode (none) / its own request " \
           "time: " in proc.stdout
    assert walked in proc.stdout.splitlines() and "trial 1 ..." not in proc.stdout
    assert data["time_budget"] == [walked]


def test_the_boundary_lines_set_experts_loaded_against_the_plan(moe: Path) -> None:
    """TEST DATA records (tests/records_factory.py) under a FAKE budget: with experts on the
    host the plan's fewest K against the fewest that loaded and the most that failed, beside
    the layer counts' line of the same context."""
    from tests.records_factory import make_record
    from tuner.results.records import TrialState

    layout = memplan.read_layout(moe)
    wl = Workload(prompt_tokens=32, gen_tokens=8, n_ctx=256)
    ctx = Context(n_ctx=256, n_ubatch=256)
    three = memplan.place(layout, -1, dataclasses.replace(ctx, experts_on_host=3)).gpu.total
    plan = memplan.make_plan(layout, 256, Budget(free_mib=(three + 64 * 1024) / MIB,
                                                 overhead_mib=0, margin_mib=0))
    op = offload.OffloadPlan(plan=plan, layers=offload.search_layers(plan),
                             experts=offload.search_experts(plan))
    f16 = {"n_ubatch": 256, "n_batch": 256, "workload": wl}
    oom = "worker died at load (out of memory)"
    records = [make_record(1, n_gpu_layers=-1, n_cpu_moe=3, **f16),
               make_record(2, n_gpu_layers=-1, n_cpu_moe=4, request_s=1.2, **f16),
               make_record(3, n_gpu_layers=-1, n_cpu_moe=2, state=TrialState.INFEASIBLE,
                           error=oom, **f16),
               make_record(4, n_gpu_layers=-1, n_cpu_moe=1, state=TrialState.INFEASIBLE,
                           error="does not fit by the memory plan: ...", **f16),
               make_record(5, n_gpu_layers=2, **f16),
               make_record(6, n_gpu_layers=-1, **f16)]  # full offload: no boundary
    fewest = memplan.fewest_experts_on_host(layout, plan.budget, ctx)
    most = memplan.most_layers(layout, plan.budget, ctx)
    head = "memory plan against loads: kv f16/f16 n_ubatch 256 flash_attn off: "
    assert offload.boundary_lines(op, records, wl) == [
        f"{head}planned {most}, loaded up to 2",
        f"{head}n_cpu_moe (every layer on the GPU) planned {fewest}, loaded down to 3, "
        "failed to load at 2",
    ]
