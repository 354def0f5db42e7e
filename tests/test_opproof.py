"""The worker takes llama.cpp's operation report from a proof context of its own, outside the
timed one, once per setting that can move an operation; the trial record carries the verdict.

Real runs use the CPU build on the tiny model (its scheduler prints a report with one CPU
split). What a CUDA worker would answer cannot run here: that answer is FAKED from the real H100
log in tests/fixtures (load log and op report both captured on the GPU), and the measured
figures in it are made up."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.opreport_edits import move_to_cpu_split
from tests.records_factory import make_record as sample_record
from tuner.builds.buildinfo import find_system_info
from tuner.evidence.opplacement import parse_op_reports, report_lines
from tuner.results.records import Environment, TrialRecord
from tuner.specs import ContextSettings, ModelSettings, TrialSpec, Workload
from tuner.worker.outcome import Outcome
from tuner.worker.protocol import Measured, Ready
from tuner.worker.runner import Runner
from tuner.worker.trialrecord import make_record

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "cuda-h100-sched-debug.log.gz"
CPU = ModelSettings(device="cpu", build="installed")
WL = Workload(prompt_tokens=16, gen_tokens=2, repetitions=1, warmup=0)
FA_Q8 = ContextSettings(n_batch=32, n_ubatch=16, flash_attn=True, type_k="f16", type_v="q8_0")


def _env(tmp: Path) -> Environment:
    return Environment(hostname="h", platform="p", python="3", cpu="c", cpu_count=2,
                       llama_cpp_python="0.3.36", tuner="0", model_path=str(tmp),
                       model_bytes=1, model_sha256="0" * 64)


def _record(spec: TrialSpec, out: Outcome, tmp: Path) -> TrialRecord:
    assert out.hello is not None
    flags = find_system_info(out.hello.system_info)
    assert flags is not None
    return make_record("s", 0, spec, WL, out, flags, None, _env(tmp))


def test_cpu_worker_takes_the_report_outside_the_timed_context(tiny_model: Path,
                                                              tmp_path: Path) -> None:
    spec = TrialSpec(model=CPU, context=FA_Q8)
    with Runner(tiny_model, tmp_path, {"installed": None}, trials_per_worker=3) as runner:
        out = runner.run(spec, WL)
        assert out.state == "complete", out.error
        log_file = Path(runner._worker.job.log_path)
        reports = parse_op_reports(out.measured.op_log)
        # The CPU build prints its schedule too: one CPU split holding every node.
        assert reports and all([s.backend for s in r.splits] == ["CPU"] for r in reports)
        ops = [n.op for n in reports[-1].nodes]
        assert ops.count("FLASH_ATTN") == 2 and "MUL_MAT" in ops  # 2 layers, flash attention
        # Reserved graphs at 1 token and at n_ubatch (16), then the proof's decodes.
        assert {r.reserve_tokens for r in reports} == {1, 16, None}
        assert out.measured.op_error is None
        # The timed context was made without GGML_SCHED_DEBUG: its log holds no report.
        assert "n_ubatch              = 16" in out.measured.log
        assert "## SPLIT" not in out.measured.log
        record = _record(spec, out, tmp_path)
        assert record.verification.verified, record.verification.reasons
        assert record.ops is not None and record.ops.verified is True
        assert record.ops.backends == {"CPU": len(reports[-1].nodes)}
        assert "ops: " in record.verification.summary

        # n_batch and threads cannot move an operation: the report is not taken again.
        reports_in_file = log_file.read_text().count("## SPLIT #0:")
        same = runner.run(TrialSpec(model=CPU, context=FA_Q8.model_copy(
            update={"n_batch": 64, "n_threads": 1})), WL)
        assert same.measured.op_log == out.measured.op_log
        assert log_file.read_text().count("## SPLIT #0:") == reports_in_file
        # Flash attention off changes the graph: a new report, without FLASH_ATTN.
        plain = runner.run(TrialSpec(model=CPU, context=ContextSettings(
            n_batch=32, n_ubatch=16)), WL)
        assert plain.state == "complete", plain.error
        assert log_file.read_text().count("## SPLIT #0:") > reports_in_file
        assert "FLASH_ATTN" not in plain.measured.op_log
        assert "SOFT_MAX" in plain.measured.op_log


@pytest.fixture(scope="module")
def h100_log() -> str:
    return gzip.decompress(FIXTURE.read_bytes()).decode()


def _gpu_outcome(load_and_context_log: str, op_log: str | None) -> Outcome:
    """FAKE: what a CUDA worker answers, built from the real H100 log (figures made up)."""
    hello = Ready(pid=1, system_info=next(ln for ln in load_and_context_log.splitlines()
                                          if ln.startswith("CUDA : ARCHS")),
                  supports_gpu_offload=True, llama_cpp_python="0.3.36", lib_dir=None, gpus=[],
                  driver=None, hostname="h", log="", load_seconds=1.0,
                  n_layer=1)
    data = Measured(pp_seconds=[0.01], tg_seconds=[0.1], context_seconds=0.1, warmups={},
                    threads=1, gpu_peak_mib=None, gpu_total_mib=None, clocks=None, log="",
                    op_log=op_log, op_error=None)
    return Outcome(state="complete", reply=data, load_log=load_and_context_log, hello=hello)


GPU_SPEC = TrialSpec(model=ModelSettings(device="cuda", build="installed"),
                     context=ContextSettings(n_batch=512, n_ubatch=512, flash_attn=True,
                                             type_k="f16", type_v="q8_0"))
GPU_WL = Workload(prompt_tokens=496, gen_tokens=16, repetitions=1, warmup=0)  # the log's n_ctx


def test_gpu_record_is_verified_down_to_the_operations(h100_log: str, tmp_path: Path) -> None:
    out = _gpu_outcome(h100_log, report_lines(h100_log))
    record = make_record("s", 0, GPU_SPEC, GPU_WL, out, find_system_info(h100_log), None,
                         _env(tmp_path))
    assert record.verification.verified, record.verification.reasons
    assert record.ops is not None and record.ops.verified is True
    assert record.ops.expected_host == ["GET_ROWS embd <- token_embd.weight on CPU"]


def test_gpu_record_with_an_op_on_the_cpu_is_not_verified(h100_log: str,
                                                           tmp_path: Path) -> None:
    out = _gpu_outcome(h100_log, report_lines(move_to_cpu_split(h100_log, "node_98")))
    record = make_record("s", 0, GPU_SPEC, GPU_WL, out, find_system_info(h100_log), None,
                         _env(tmp_path))
    assert not record.verification.verified and not record.usable
    assert record.verification.reasons == ["FLASH_ATTN (node_98, layer 2) runs on CPU"]
    assert record.ops is not None and record.ops.off_device == [
        "FLASH_ATTN node_98, layer 2 on CPU"]


def test_gpu_record_without_a_report_is_not_verified(h100_log: str, tmp_path: Path) -> None:
    out = _gpu_outcome(h100_log, None)
    record = make_record("s", 0, GPU_SPEC, GPU_WL, out, find_system_info(h100_log), None,
                         _env(tmp_path))
    assert not record.verification.verified
    assert record.verification.reasons == [
        "no operation report from llama.cpp's scheduler: where each operation ran is unproven"]


def test_records_stored_before_the_op_check_still_load(h100_log: str, tmp_path: Path) -> None:
    old = json.loads(sample_record(1).model_dump_json())
    del old["ops"]  # a line written before records had it
    assert TrialRecord.model_validate_json(json.dumps(old)).ops is None
    out = _gpu_outcome(h100_log, report_lines(h100_log))
    new = make_record("s", 0, GPU_SPEC, GPU_WL, out, find_system_info(h100_log), None,
                      _env(tmp_path))
    again = TrialRecord.model_validate_json(new.model_dump_json())
    assert again == new and len(new.model_dump_json()) < 8000  # a summary, not the report
