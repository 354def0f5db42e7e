"""Part of one layer on the GPU (the setting ``ffn_on_host``): past the most layers that fit
whole, the next layer with some of its FFN matrices in host memory, as llama.cpp's own fit
places its partial layer (common/fit.cpp LAYER_FRACTION_ATTN/_UP/_GATE). Shown here with a real
4-layer llama GGUF on the CPU build: the worker's own load keeps exactly those tensors on the
host (its real load log), the proof refuses edited logs and the CUDA fixture edited the same
way; the memory plan's bytes against the file's tensor table read by the gguf package; tuner's
launcher and the real llama-server each load a deployment's part as the trial did; and the
search pairs the parts with the layer past the boundary under a FAKE GPU budget (no GPU here)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from tests.partial_fixture import partial_log
from tests.server_run import complete, free_port, running_server
from tests.test_llamaserver import BUILDS
from tests.worker_load import worker_load_log
from tuner.deploy.llamaserver import (
    find_server,
    process_env,
    running,
    server_args,
    server_env,
    wait_healthy,
)
from tuner.deploy.serverlaunch import MODULE, server_module
from tuner.deploy.service import service_env
from tuner.evidence.placement import (
    Expectation,
    ffn_reasons,
    parse_load_log,
    summarize,
    verify,
)
from tuner.models import memplan
from tuner.models.memplan import MIB, Budget, Context
from tuner.search import offload
from tuner.search.space import default_space, grid
from tuner.settings import FFN_ON_HOST, ffn_host_layer
from tuner.specs import ContextSettings, ModelSettings, TrialSpec, Workload

N_LAYER = 4
REPO = Path(__file__).resolve().parent.parent
OVERRIDE = re.compile(r"^tensor (blk\.(\d+)\.\w+\.weight) .*overridden to (\S+)$", re.M)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tuner.models.modelgen import SHAPES, write_llama

    return write_llama(tmp_path_factory.mktemp("small") / "small.gguf",
                       **{**SHAPES["tiny"], "n_layer": N_LAYER})


def _worker_load_log(model: Path, ngl: int, part: str, tmp: Path, n_cpu_moe: int = 0) -> str:
    return worker_load_log(model, tmp, n_gpu_layers=ngl, ffn_on_host=part, n_cpu_moe=n_cpu_moe)


@pytest.mark.parametrize(("ngl", "part", "layer", "moved"), [
    (3, "gate+down", 2, {"ffn_gate", "ffn_down"}),
    (-1, "gate+up+down", 0, {"ffn_gate", "ffn_up", "ffn_down"}),
    (2, "down", 3, {"ffn_down"}),
])
def test_the_worker_keeps_exactly_the_parts_asked_on_the_host(
        small: Path, tmp_path: Path, ngl: int, part: str, layer: int, moved: set[str]) -> None:
    text = _worker_load_log(small, ngl, part, tmp_path)
    found = OVERRIDE.findall(text)
    assert {name.split(".")[2] for name, _, _ in found} == moved
    assert {int(il) for _, il, _ in found} == {layer}
    assert all(buft.startswith("CPU") for _, _, buft in found)
    ev = parse_load_log(text)
    assert ffn_reasons(ev, part, ngl) == []
    assert f", FFN {part} of layer {layer} on CPU" in summarize(ev)
    # The same log does not prove another part, another layer count, nor none
    other = next(p for p in FFN_ON_HOST if p != part)
    refused = ffn_reasons(ev, other, ngl)
    assert refused and all(f"{other} of layer {layer}" in r or f"asked for {other}" in r
                           for r in refused), refused
    assert ffn_reasons(ev, "", ngl)[0].endswith("the trial asked no override of it")
    shifted = 4 if ngl == 3 else 3
    assert any("the trial asked for the FFN matrices" in r for r in ffn_reasons(ev, part, shifted))


def test_no_part_asked_loads_no_override(small: Path, tmp_path: Path) -> None:
    ev = parse_load_log(_worker_load_log(small, 3, "", tmp_path))
    assert ev.overridden == {} and ffn_reasons(ev, "", 3) == []
    assert ffn_reasons(ev, "down", 3) == [
        "the FFN matrices none of layer 2 in host memory; the trial asked for down"]


def test_a_mixture_of_experts_keeps_part_of_the_next_layer_beside_the_experts(
        tmp_path: Path) -> None:
    """A real qwen3moe file (4 layers): the experts of layer 0 on the host (n_cpu_moe 1) and of
    layer 1 the down experts (ffn_on_host down), as llama.cpp's fit keeps part of one more
    layer; the proof takes each as asked and refuses the log for the experts alone."""
    from tuner.models.archgen import write_qwen3moe

    moe = write_qwen3moe(tmp_path / "moe.gguf", n_layer=4)
    ev = parse_load_log(_worker_load_log(moe, -1, "down", tmp_path, n_cpu_moe=1))
    assert sorted(ev.overridden) == ["blk.0.ffn_down_exps.weight", "blk.0.ffn_gate_exps.weight",
                                     "blk.0.ffn_up_exps.weight", "blk.1.ffn_down_exps.weight"]
    asked = Expectation(device="cpu", n_gpu_layers=-1, n_cpu_moe=1, ffn_on_host="down")
    v = verify(ev, asked)
    assert v.verified, v.reasons
    assert v.summary.startswith("5/5 layers on CPU, experts of layer 0 on CPU, FFN down_exps "
                                "of layer 1 on CPU, ")
    alone = verify(ev, asked.model_copy(update={"ffn_on_host": ""}))
    assert alone.reasons == ["the expert weights of layers 0-1 in host memory; the trial asked "
                             "for those of layer 0"]
    # The plan moves layer 1's down experts beside layer 0's experts
    layout = memplan.read_layout(moe)
    ctx = Context(n_ctx=256, n_ubatch=64, experts_on_host=1)
    split = memplan.place(layout, -1, dataclasses.replace(ctx, ffn_on_host="down"))
    assert memplan.place(layout, -1, ctx).gpu.weights - split.gpu.weights == \
        layout.ffn_host_bytes(1, "down") > 0


# The CUDA fixture at n_gpu_layers 20 (of 33: the first GPU layer is 13) with layer 13's gate
# and down kept on the host, the lines llama.cpp prints for the overrides (Q4_0 matrices of
# 4096 x 11008: 24.2 MiB each) inserted where the load prints them, before the offload count.
def _with_overrides(text: str, names: list[str]) -> str:
    lines = "".join(f"tensor {n} (24 MiB q4_0) buffer type overridden to CPU\n" for n in names)
    return text.replace("load_tensors: offloading ", lines + "load_tensors: offloading ", 1)


PART_FIXTURE = _with_overrides(partial_log(20), ["blk.13.ffn_gate.weight",
                                                 "blk.13.ffn_down.weight"])
PART20 = Expectation(device="cuda", n_gpu_layers=20, type_k="f16", type_v="f16",
                     flash_attn=True, n_ctx=4096, n_ubatch=512, ffn_on_host="gate+down")


def test_a_partial_layer_fixture_is_verified() -> None:
    v = verify(parse_load_log(PART_FIXTURE), PART20)
    assert v.verified, v.reasons
    assert v.summary.startswith("20/33 layers on CUDA0, 13/33 layers on CPU, FFN gate+down of "
                                "layer 13 on CPU, KV cache on")


@pytest.mark.parametrize(("edited", "reason"), [
    # the part of another layer: the second GPU layer's, not the first's
    (PART_FIXTURE.replace("blk.13.", "blk.14."), "tensor blk.14.ffn_down.weight overridden "
     "to CPU: the trial asked for the FFN matrices gate+down of layer 13"),
    # a matrix fewer: only down on the host
    (PART_FIXTURE.replace("tensor blk.13.ffn_gate.weight (24 MiB q4_0) buffer type "
                          "overridden to CPU\n", ""),
     "the FFN matrices down of layer 13 in host memory; the trial asked for gate+down"),
    # one of them sent to a GPU buffer
    (PART_FIXTURE.replace("ffn_gate.weight (24 MiB q4_0) buffer type overridden to CPU",
                          "ffn_gate.weight (24 MiB q4_0) buffer type overridden to CUDA0"),
     "FFN tensor blk.13.ffn_gate.weight overridden to CUDA0, not to host memory"),
    # an attention matrix moved too
    (_with_overrides(PART_FIXTURE, ["blk.13.attn_q.weight"]),
     "tensor blk.13.attn_q.weight overridden to CPU: the trial asked for the FFN matrices"),
    # no override at all: the whole layer went to the GPU
    (partial_log(20), "the FFN matrices none of layer 13 in host memory"),
])
def test_an_edited_partial_layer_log_is_refused(edited: str, reason: str) -> None:
    v = verify(parse_load_log(edited), PART20)
    assert not v.verified
    assert any(r.startswith(reason) for r in v.reasons), v.reasons


def test_the_plain_partial_log_refuses_a_part_it_does_not_show() -> None:
    v = verify(parse_load_log(PART_FIXTURE), PART20.model_copy(update={"ffn_on_host": ""}))
    assert v.reasons == [f"tensor blk.13.ffn_{m}.weight overridden to CPU: the trial asked no "
                         "override of it" for m in ("down", "gate")]


def test_the_plan_moves_exactly_the_parts_bytes(small: Path) -> None:
    """The memory plan's bytes of each part against the file's tensor table as the gguf
    package reads it, and the GPU share at n_gpu_layers 3 lowered by exactly them."""
    import gguf

    reader = gguf.GGUFReader(small)
    sizes = {t.name: int(t.n_bytes) for t in reader.tensors}
    layout = memplan.read_layout(small)
    ctx = Context(n_ctx=256, n_ubatch=64)
    whole = memplan.place(layout, 3, ctx)
    for part, mats in (("down", ["ffn_down"]), ("gate+down", ["ffn_gate", "ffn_down"]),
                       ("gate+up+down", ["ffn_gate", "ffn_up", "ffn_down"])):
        want = sum(sizes[f"blk.2.{m}.weight"] for m in mats)
        assert layout.ffn_host_bytes(2, part) == want
        split = memplan.place(layout, 3, dataclasses.replace(ctx, ffn_on_host=part))
        assert whole.gpu.weights - split.gpu.weights == want
        assert split.host.weights - whole.host.weights == want
    assert ffn_host_layer(N_LAYER, 3, 0) == 2 and ffn_host_layer(N_LAYER, -1, 0) == 0
    assert ffn_host_layer(N_LAYER, 1, 0) is None and ffn_host_layer(N_LAYER, 0, 0) is None
    # With the experts of the first layers on the host: the next layer, while there is one
    assert ffn_host_layer(N_LAYER, -1, 2) == 2 and ffn_host_layer(N_LAYER, -1, N_LAYER) is None


def test_the_spec_refuses_a_part_without_a_gpu_layer() -> None:
    for ngl in (0, 1):
        with pytest.raises(ValueError, match="needs a repeating layer on the GPU"):
            ModelSettings(n_gpu_layers=ngl, ffn_on_host="down")
    # With experts on the host a part is of the layer after theirs
    assert ModelSettings(n_gpu_layers=-1, n_cpu_moe=2, ffn_on_host="down").ffn_on_host == "down"
    assert ModelSettings(device="cpu", ffn_on_host="down").ffn_on_host == ""


# -- the deployment: the layer resolved against the model, applied by each server ------------

def _spec(ngl: int, part: str) -> TrialSpec:
    return TrialSpec(model=ModelSettings(n_gpu_layers=ngl, ffn_on_host=part),
                     context=ContextSettings(n_batch=64, n_ubatch=64))


def test_the_deployment_names_the_layer_and_its_servers_apply_it(small: Path) -> None:
    spec = _spec(3, "gate+down")
    env = service_env(spec, None, small)
    assert env["TUNER_FFN_ON_HOST"] == "2:gate+down" and server_module(env) == MODULE
    assert server_module({"TUNER_FFN_ON_HOST": ""}) == "llama_cpp.server"
    args = server_args(spec, Workload(prompt_tokens=16, gen_tokens=4), str(small), 2)
    assert args[args.index("-ot") + 1] == r"blk\.2\.ffn_(gate|gate_up|down)=CPU"
    assert "TUNER_FFN_ON_HOST" not in server_env(spec, "/lib", str(small))
    assert "TUNER_FFN_ON_HOST" not in service_env(_spec(3, ""), None, small)


def test_the_launcher_serves_the_part_as_the_trial_loaded_it(small: Path,
                                                              tmp_path: Path) -> None:
    """tuner's launcher started as a deployment starts it (its environment from the
    sidecar), a real llama_cpp.server: its load log proves the part, and it answers."""
    port = free_port()
    config = tmp_path / "production.yaml"
    config.write_text(json.dumps({"host": "127.0.0.1", "port": port, "models": [
        {"model": str(small), "n_gpu_layers": 3, "n_ctx": 128, "verbose": True}]}))
    env = service_env(_spec(3, "down"), None, small)
    (tmp_path / "production.tuner.json").write_text(json.dumps({"env": env}))
    log = tmp_path / "server.log"
    with running_server(config, log, port, module=MODULE) as (base, _):
        assert isinstance(complete(base, max_tokens=2), str)
    ev = parse_load_log(log.read_text())
    assert ffn_reasons(ev, "down", 3) == [], log.read_text()[-2000:]
    assert {n for n in ev.overridden} == {"blk.2.ffn_down.weight"}


def test_llama_server_applies_the_part_from_its_arguments(small: Path, tmp_path: Path) -> None:
    binary = find_server(None, BUILDS)
    if binary is None:
        pytest.fail(f"no llama-server built in {BUILDS} (scripts/test.sh builds it)")
    spec = _spec(-1, "gate+up+down")
    args = server_args(spec, Workload(prompt_tokens=16, gen_tokens=4), str(small), 1,
                       port=free_port())
    log = tmp_path / "llama-server.log"
    lib = str(Path(binary).parent)
    with running(binary, args, process_env(server_env(spec, lib, str(small))), tmp_path,
                 log) as proc:
        wait_healthy(proc, f"http://127.0.0.1:{args[args.index('--port') + 1]}", log, 120)
    ev = parse_load_log(log.read_text(errors="replace"))
    assert ffn_reasons(ev, "gate+up+down", -1) == [], log.read_text()[-2000:]
    assert {n.split(".")[1] for n in ev.overridden} == {"0"}


# -- the search: the parts at the layer past the boundary (FAKE budget: no GPU here) ---------

@pytest.fixture(scope="module")
def sparse_7b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full-size qwen2.5-7b-shaped F16 file whose data is a hole (header real, no disk)."""
    from tuner.models.modelgen import SHAPES, write_llama

    return write_llama(tmp_path_factory.mktemp("sparse") / "q7b.gguf", **SHAPES["qwen2.5-7b"],
                       sparse=True)


WL = Workload(prompt_tokens=2048, gen_tokens=128)
CTX = Context(n_ctx=WL.n_ctx, n_ubatch=512, flash_attn=True)


def _gate_down_fits(layout: memplan.ModelLayout) -> tuple[Budget, int]:
    """A FAKE budget in which, with the f16 cache at n_ubatch 512 and flash attention, 20
    layers fit whole and the 21st fits with its gate and down on the host, not with down
    alone; and 20."""
    at = memplan.place(layout, 21, dataclasses.replace(CTX, ffn_on_host="gate+down")).gpu.total
    down = memplan.place(layout, 21, dataclasses.replace(CTX, ffn_on_host="down")).gpu.total
    budget = Budget(free_mib=(at + down) / 2 / MIB, overhead_mib=0, margin_mib=0)
    assert memplan.most_layers(layout, budget, CTX) == 20
    return budget, 20


def _spec7(ngl: int, part: str) -> TrialSpec:
    return TrialSpec(model=ModelSettings(n_gpu_layers=ngl, ffn_on_host=part),
                     context=ContextSettings(n_batch=2048, n_ubatch=512, flash_attn=True))


def test_the_search_tries_the_largest_part_that_fits_and_the_next(sparse_7b: Path) -> None:
    layout = memplan.read_layout(sparse_7b)
    budget, most = _gate_down_fits(layout)
    tried = {p: offload.tried_by_plan(layout, budget, _spec7(most + 1, p), WL)
             for p in FFN_ON_HOST}
    assert not tried["gate+up+down"][0]  # the least on the GPU: gate+down keeps more
    assert tried["gate+down"][0] and tried["down"][0]  # the largest that fits, the probe
    assert tried["down"][1] == ("the most that fit whole: 20; a part of the next layer's FFN "
                                "on the host: the most on the GPU that fits gate+down, and the "
                                "next is tried")
    # Only at the layer past the boundary: below it the whole layer fits
    ok, why = offload.tried_by_plan(layout, budget, _spec7(most, "gate+down"), WL)
    assert not ok and why.endswith("only at 21 layers")
    # The grid keeps them so, beside the whole layers
    plan = memplan.make_plan(layout, WL.n_ctx, budget)
    op = offload.OffloadPlan(plan=plan, layers=offload.search_layers(plan),
                             experts=offload.search_experts(plan),
                             parts=offload.search_parts(plan))
    assert op.parts == tuple(FFN_ON_HOST)
    specs = offload.keep_fitting(op, grid(default_space("cuda", ["default"], op.layers,
                                                        parts=op.parts), "cuda", WL,
                                          lambda *_: True), WL)
    parted = [s for s in specs if s.model.ffn_on_host]
    assert parted and not any(s.model.n_cpu_moe for s in parted)
    for s in parted:  # each at its own context's layer past the boundary
        whole = memplan.most_layers(layout, budget, dataclasses.replace(
            offload.spec_context(s, WL), ffn_on_host=""))
        assert s.model.n_gpu_layers == whole + 1
    mine = [s for s in parted if (s.context.type_k, s.context.n_ubatch, s.context.flash_attn)
            == ("f16", 512, True)]
    assert {s.model.ffn_on_host for s in mine} == {"gate+down", "down"}


def test_a_part_that_loads_past_the_plan_walks_it(sparse_7b: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """FAKE free memory: the probe (down on the host at the 21st layer) loaded and ran; the
    plan's boundary moves to it, and the whole 21st layer is the next probe."""
    layout = memplan.read_layout(sparse_7b)
    budget, most = _gate_down_fits(layout)
    plan = memplan.make_plan(layout, WL.n_ctx, budget)
    op = offload.OffloadPlan(plan=plan, layers=offload.search_layers(plan),
                             parts=offload.search_parts(plan))
    monkeypatch.setattr(offload, "free_for_trials", lambda gpu: budget.free_mib)
    walked, line = offload.walk_up(op, _spec7(most + 1, "down"), WL) or (None, "")
    assert walked is not None
    assert line.startswith("memory plan: n_gpu_layers 21 ffn_on_host down loaded and ran "
                           "where the plan gave")
    now = walked.plan.budget
    assert offload.tried_by_plan(layout, now, _spec7(most + 1, "down"), WL)[0]
    assert not offload.tried_by_plan(layout, now, _spec7(most + 1, "gate+down"), WL)[0]
    assert offload.tried_by_plan(layout, now, _spec7(most + 1, ""), WL)[0]


def test_a_user_space_asking_parts_of_a_model_without_ffn_matrices_is_refused(
        tmp_path: Path) -> None:
    """A recurrent model (mamba: no FFN) cannot keep FFN matrices on the host: one line, before
    any trial; a dense model or a mixture of experts can."""
    from tuner.errors import BadInput
    from tuner.models.archgen import write_mamba, write_qwen3moe

    mamba = memplan.read_layout(write_mamba(tmp_path / "mamba.gguf"))
    with pytest.raises(BadInput, match="has no FFN matrices"):
        offload.check_parts(mamba, ["", "down"])
    offload.check_parts(mamba, [""])  # none asked: nothing to refuse
    offload.check_parts(memplan.read_layout(write_qwen3moe(tmp_path / "moe.gguf", n_layer=2)),
                        ["down"])


def test_a_mixture_of_experts_searches_parts_beside_one_fewer_layers_experts(
        tmp_path: Path) -> None:
    """FAKE budget (no GPU here) in which the experts of 3 of a qwen3moe file's 4 layers on the
    host let every layer fit: the parts searched are those that keep some of the next layer's
    experts on the GPU, each with n_cpu_moe 2 and every layer on the GPU."""
    from tuner.models.archgen import write_qwen3moe

    layout = memplan.read_layout(write_qwen3moe(tmp_path / "moe.gguf", n_layer=N_LAYER))
    ctx = Context(n_ctx=256, n_ubatch=256)
    three = memplan.place(layout, -1, dataclasses.replace(ctx, experts_on_host=3)).gpu.total
    budget = Budget(free_mib=(three + 64 * 1024) / MIB, overhead_mib=0, margin_mib=0)
    plan = memplan.make_plan(layout, 256, budget)
    op = offload.OffloadPlan(plan=plan, layers=offload.search_layers(plan),
                             experts=offload.search_experts(plan),
                             parts=offload.search_parts(plan))
    assert op.parts == ("gate+down", "down")
    wl = Workload(prompt_tokens=32, gen_tokens=8, n_ctx=256)
    specs = offload.keep_fitting(op, grid(default_space("cuda", ["default"], op.layers,
                                                        experts=op.experts, parts=op.parts),
                                          "cuda", wl, lambda *_: True), wl)
    parted = [s for s in specs if s.model.ffn_on_host]
    assert parted
    for s in parted:  # one fewer layers' experts than the fewest its own setting fits whole
        fewest = memplan.fewest_experts_on_host(layout, budget, dataclasses.replace(
            offload.spec_context(s, wl), ffn_on_host=""))
        assert s.model.n_gpu_layers == -1 and s.model.n_cpu_moe == (fewest or 0) - 1


def test_the_boundary_lines_and_the_report_name_the_part(sparse_7b: Path) -> None:
    """TEST DATA records (tests/records_factory.py) of the sparse 7B file under the FAKE budget:
    the part's own boundary line beside the whole layers'; a winner with a part is reported
    with the layer's FFN on the host, and the whole layer past it as more on the GPU."""
    from tests.records_factory import make_record
    from tuner.reports.offloadview import offload_lines
    from tuner.results.records import TrialState

    layout = memplan.read_layout(sparse_7b)
    budget, most = _gate_down_fits(layout)
    plan = memplan.make_plan(layout, WL.n_ctx, budget)
    op = offload.OffloadPlan(plan=plan, layers=offload.search_layers(plan),
                             parts=offload.search_parts(plan))
    same = {"n_batch": 2048, "n_ubatch": 512, "flash_attn": True, "workload": WL,
            "model_path": str(sparse_7b)}
    records = [make_record(1, n_gpu_layers=most, request_s=1.1, **same),
               make_record(2, n_gpu_layers=most + 1, ffn_on_host="gate+down", **same),
               make_record(3, n_gpu_layers=most + 1, state=TrialState.INFEASIBLE,
                           error="worker died at load (out of memory)", **same)]
    head = "memory plan against loads: kv f16/f16 n_ubatch 512 flash_attn on"
    lines = offload.boundary_lines(op, records, WL)
    assert f"{head}: planned {most}, loaded up to {most}, failed to load at {most + 1}" in lines
    assert f"{head} ffn_on_host gate+down: planned {most + 1}, loaded up to {most + 1}" in lines
    winner = records[1].model_copy(update={"placement": {"total_layers": 29}})
    text = "\n".join(offload_lines(winner, records))
    assert text.startswith(f"{most + 1}/29 layers on the GPU, the FFN gate+down of the first of "
                           "them in host memory (partial offload, ffn_on_host gate+down)")
    assert f"more on the GPU did not fit: ngl {most + 1} infeasible" in text
    assert "memory plan MiB: GPU model " in text
