"""benchmarks/partial_offload.py's reference, llama.cpp's own fit: what llama-fit-params prints
is read (a FAKE llama-fit-params, a script printing the output the vendored README records: no
GPU here, and building llama.cpp's tools is a long CPU build), and a missing or failing one is
an error entry, never a crash."""

from __future__ import annotations

import importlib.util
import stat
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
README = Path("/work/src/llama_cpp_python-0.3.36/vendor/llama.cpp/tools/fit-params/README.md")
# The answer line of the vendored README's example (a MoE model: expert tensors on the CPU).
README_ANSWER = ('-c 4096 -ngl 48 -ot blk\\.14\\.ffn_(up|down|gate)_(ch|)exps=CPU,'
                 'blk\\.15\\.ffn_(up|down|gate)_(ch|)exps=CPU')


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("partial_offload",
                                                  REPO / "benchmarks" / "partial_offload.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_fit(bench: Path, stdout: str, rc: int = 0) -> None:
    """FAKE llama-fit-params: prints ``stdout``, llama.cpp's fit lines on stderr."""
    exe = bench / "bin" / "llama-fit-params"
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text(f"#!{sys.executable}\nimport sys\n"
                   "sys.stderr.write('llama_params_fit_impl: projected to use 5200 MiB of device "
                   "memory vs. 4096 MiB of free device memory\\n')\n"
                   f"sys.stdout.write({stdout!r})\nsys.exit({rc})\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)


def test_fit_answer_is_read(tmp_path: Path) -> None:
    po = _module()
    if README.is_file():  # the line the test holds is the vendored README's
        assert README_ANSWER in README.read_text()
    _fake_fit(tmp_path, README_ANSWER + "\n")
    fit = po.fit_choice(tmp_path, tmp_path / "m.gguf", 2176)
    assert (fit["n_ctx"], fit["ngl"], fit["ts"]) == (4096, 48, None)
    assert fit["ot"].startswith("blk\\.14\\.ffn_") and fit["ot"].endswith("exps=CPU")
    assert fit["log"] == ["projected to use 5200 MiB of device memory vs. 4096 MiB of free "
                          "device memory"]
    _fake_fit(tmp_path, '-c 2176 -ngl 17 -ot "blk\\.3\\.ffn_down.*=CPU"\n')  # as fit-params.cpp
    fit = po.fit_choice(tmp_path, tmp_path / "m.gguf", 2176)
    assert (fit["ngl"], fit["ot"]) == (17, "blk\\.3\\.ffn_down.*=CPU")
    _fake_fit(tmp_path, "-c 2176 -ngl 17\n")
    fit = po.fit_choice(tmp_path, tmp_path / "m.gguf", 2176)
    assert (fit["n_ctx"], fit["ngl"], fit["ot"]) == (2176, 17, None)


@pytest.mark.parametrize(("stdout", "rc", "said"), [
    ("", 1, "llama-fit-params exit 1: llama_params_fit_impl: projected"),
    ("nothing it knows\n", 0, "llama-fit-params exit 0"),
])
def test_a_failing_fit_is_an_error_entry(tmp_path: Path, stdout: str, rc: int,
                                         said: str) -> None:
    po = _module()
    _fake_fit(tmp_path, stdout, rc)
    fit = po.fit_choice(tmp_path, tmp_path / "m.gguf", None)
    assert said in fit["error"] and "ngl" not in fit
    assert po._fit_row(tmp_path, tmp_path / "m.gguf", fit) is None


def test_no_fit_binary_is_said(tmp_path: Path) -> None:
    fit = _module().fit_choice(tmp_path, tmp_path / "m.gguf", 2176)
    assert "no " in fit["error"] and "installed_bench.py" in fit["error"]


def test_disk_need_is_the_f16_file_and_its_quantized_copy(tmp_path: Path) -> None:
    """The sparse f16 file modelgen writes (full size, no disk) against the need said before
    benchmarks/gpu_session.sh makes a model: f16 + at most q8_0's 34/32 bytes a weight."""
    from tuner.models.modelgen import SHAPES, write_llama

    po = _module()
    f16 = write_llama(tmp_path / "q7b.gguf", **SHAPES["qwen2.5-7b"], sparse=True)
    weights = f16.stat().st_size / 2  # bytes / 2 = f16 weights (the header is a few MiB)
    want = weights * (2 + 34 / 32) / 2**30 + 4
    assert po.disk_need_gib("qwen2.5-7b") == pytest.approx(want, rel=0.01)
    assert 40 < po.disk_need_gib("qwen2.5-14b") < 64  # the GPU machine's 64 GiB disk


def test_replay_puts_a_recorded_peak_through_the_products_calibration(tmp_path: Path) -> None:
    """`partial_offload.py replay`: a trial's setting and NVML peak (here the plan's buffers
    and 300 MiB: TEST DATA, no GPU) through tuner/search/offload.py calibrate, the plan's
    most layers per row before and after."""
    import subprocess

    from tuner.models import memplan
    from tuner.models.modelgen import SHAPES, write_llama

    model = write_llama(tmp_path / "q7b.gguf", **SHAPES["qwen2.5-7b"], sparse=True)
    layout = memplan.read_layout(model)
    ctx = memplan.Context(n_ctx=2176, n_ubatch=512)
    top = memplan.most_layers(layout, memplan.Budget(free_mib=8192), ctx)
    peak = memplan.place(layout, top, ctx).gpu.total / memplan.MIB + 300
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "partial_offload.py"),
                           "replay", "--model", str(model), "--free-mib", "8192", "--ngl",
                           str(top), "--kv", "f16", "--n-ubatch", "512", "--peak-mib",
                           f"{peak:.1f}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "the process overhead is 300 MiB, not the 900 MiB planned" in done.stdout
    rows = [ln.split("|")[1:-1] for ln in done.stdout.splitlines()
            if ln.startswith("| f16") or ln.startswith("| q")]
    assert len(rows) == 9  # three cache types x three n_ubatch
    pairs = [(int(r[2]), int(r[3])) for r in rows]
    assert all(after >= before for before, after in pairs)
    assert any(after > before for before, after in pairs)
    assert [r[2].strip() for r in rows if r[0].strip() == "f16/f16" and r[1].strip() == "512"] \
        == [str(top)]


def test_a_mixture_of_experts_shape_is_made_and_sized(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU session's MoE model (tuner/models/archgen.py MOE_SHAPES): the disk it needs is
    counted from the same layout it is written with, and the command line writes a file the
    memory plan reads as a mixture of experts (a small shape put beside the real ones)."""
    from tuner.models import archgen, memplan

    po = _module()
    olmoe = archgen.MOE_SHAPES["olmoe-7b"]
    experts = 3 * olmoe["n_expert"] * olmoe["n_ff_exp"] * olmoe["n_embd"] * olmoe["n_layer"]
    assert po.disk_need_gib("olmoe-7b") > experts * 2 / 2**30 + 4
    monkeypatch.setitem(archgen.MOE_SHAPES, "tiny-moe", {
        "n_layer": 3, "n_embd": 128, "n_head": 2, "n_head_kv": 2, "head_dim": 64, "n_ff": 64,
        "n_expert": 4, "n_expert_used": 2, "n_ff_exp": 64})
    out = tmp_path / "m.gguf"
    assert archgen.main(["--shape", "tiny-moe", "--out", str(out)]) == 0
    layout = memplan.read_layout(out)
    assert layout.n_layer == 3 and layout.n_expert == 4
    assert all(b == 3 * 4 * 64 * 128 * 2 for b in layout.expert_bytes)  # f16


def test_the_compare_benches_a_winners_part_of_a_layer_after_each_count(tmp_path: Path) -> None:
    """llama-bench at a winner with experts on the host and part of the next layer's FFN there
    (n_cpu_moe 2, ffn_on_host down) runs at K - 1, K and K + 1 with the part's -ot of the layer
    after each count's experts; a dense winner's part is its first GPU layer's; none without."""
    from tuner.models.archgen import write_qwen3moe
    from tuner.models.modelgen import SHAPES, write_llama
    from tuner.specs import ModelSettings

    part_args = _module().part_args
    moe = write_qwen3moe(tmp_path / "moe.gguf", n_layer=4)
    ms = ModelSettings(n_gpu_layers=-1, n_cpu_moe=2, ffn_on_host="down")
    assert [part_args(moe, ms, k) for k in (1, 2, 3)] == [
        ["-ot", rf"blk\.{il}\.ffn_down=CPU"] for il in (1, 2, 3)]
    dense = write_llama(tmp_path / "d.gguf", **{**SHAPES["tiny"], "n_layer": 4})
    assert part_args(dense, ModelSettings(n_gpu_layers=3, ffn_on_host="gate+down"), 0) == [
        "-ot", r"blk\.2\.ffn_(gate|gate_up|down)=CPU"]
    assert part_args(dense, ModelSettings(n_gpu_layers=3), 0) == []
