"""The operation-level proof on a real scheduler report from an H100
(tests/fixtures/cuda-h100-sched-debug.log.gz: a 1B-class model, every layer on CUDA0, flash
attention with f16 K and q8_0 V, GGML_SCHED_DEBUG=2) and on edited copies of it with nodes moved
to the CPU, the way llama.cpp's scheduler prints a node it runs elsewhere."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from tests.opreport_edits import move_node_line, move_to_cpu_split
from tuner.evidence.opplacement import check_ops, has_op_report, parse_op_reports, report_lines

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "cuda-h100-sched-debug.log.gz"


@pytest.fixture(scope="module")
def h100_log() -> str:
    return gzip.decompress(FIXTURE.read_bytes()).decode()


def test_h100_report_is_verified(h100_log: str) -> None:
    reports = parse_op_reports(h100_log)
    # 6 graphs reserved at context creation (at 1 and at 512 tokens), then one decode.
    assert [r.reserve_tokens for r in reports] == [1, 1, 1, 512, 1, 512, None]
    for report in reports:
        cpu, cuda = report.splits
        assert (cpu.backend, cuda.backend) == ("CPU", "CUDA0")
        assert [(n.op, n.name, n.sources[0]) for n in cpu.nodes] == [
            ("GET_ROWS", "embd", "token_embd.weight")]
        attention = [n for n in cuda.nodes if n.op == "FLASH_ATTN"]
        assert len(attention) == 16 and {n.backend for n in cuda.nodes} == {"CUDA0"}
    ops = check_ops(h100_log, "cuda")
    assert ops.verified is True and ops.reasons == []
    assert ops.backends == {"CPU": 1, "CUDA0": 341}
    assert ops.expected_host == ["GET_ROWS embd <- token_embd.weight on CPU"]


def test_flash_attention_moved_to_a_cpu_split_is_named(h100_log: str) -> None:
    edited = move_to_cpu_split(h100_log, "node_98")
    last = parse_op_reports(edited)[-1]
    assert [s.backend for s in last.splits] == ["CPU", "CUDA0", "CPU", "CUDA0"]
    assert [s.index for s in last.splits] == [0, 1, 2, 3]
    ops = check_ops(edited, "cuda")
    assert ops.verified is False
    assert ops.reasons == ["FLASH_ATTN (node_98, layer 2) runs on CPU"]
    assert ops.off_device == ["FLASH_ATTN node_98, layer 2 on CPU"]


def test_a_matmul_whose_node_line_says_cpu_is_named(h100_log: str) -> None:
    # Only the node line is edited, the split still says CUDA0: never read as on the GPU.
    ops = check_ops(move_node_line(h100_log, "ffn_up-5"), "cuda")
    assert ops.verified is False
    assert ops.reasons == ["MUL_MAT (ffn_up-5) runs on CPU"]


def test_every_attention_op_on_cpu_is_one_reason(h100_log: str) -> None:
    edited = h100_log
    for layer in range(16):
        node = next(n.name for n in parse_op_reports(h100_log)[-1].nodes
                    if n.op == "FLASH_ATTN" and n.layer == layer)
        edited = move_node_line(edited, node)
    ops = check_ops(edited, "cuda")
    assert ops.verified is False and ops.off_device_count == 16
    assert len(ops.reasons) == 1
    assert ops.reasons[0].startswith("FLASH_ATTN runs on CPU in 16 nodes (node_24, node_61, ")
    assert ops.reasons[0].endswith("layers 0-15)")


def test_only_the_input_embedding_lookup_may_stay_on_the_host(h100_log: str) -> None:
    # The output-row selection is a GET_ROWS too, but of activations: it must run on CUDA.
    ops = check_ops(move_node_line(h100_log, "node_585"), "cuda")
    assert ops.reasons == ["GET_ROWS (node_585, layer 15) runs on CPU"]  # of the last layer
    # A position-embedding lookup (GPT-2-like models) is input layer by design, like tokens.
    positions = h100_log.replace("   token_embd.weight (", "position_embd.weight (")
    assert check_ops(positions, "cuda").verified is True


def test_interleaved_lines_and_a_cut_last_report(h100_log: str) -> None:
    lines = h100_log.splitlines()
    noisy = []
    for i, line in enumerate(lines):
        noisy.append(line)
        if line.startswith("node #") and i % 50 == 0:
            noisy.append("llama_context: some other thread said something")
    cut = "\n".join(noisy[: len(noisy) - 30])  # the decode's report loses its tail
    reports = parse_op_reports(cut)
    assert len(reports) == 7 and len(reports[-1].nodes) < len(reports[0].nodes)
    assert check_ops(cut, "cuda").verified is True
    assert check_ops(move_node_line(cut, "node_98"), "cuda").verified is False


def test_no_report(h100_log: str) -> None:
    plain = "\n".join(ln for ln in h100_log.splitlines()
                      if not ln.startswith(("## SPLIT", "node #")))
    assert not has_op_report(plain) and has_op_report(h100_log)
    trial = check_ops(plain, "cuda", error="llama.cpp could not create the proof context")
    assert trial.verified is False
    assert trial.reasons == ["no operation report from llama.cpp's scheduler (llama.cpp could "
                             "not create the proof context): where each operation ran is "
                             "unproven"]
    assert check_ops(None, "cuda", required=False).verified is None
    cpu = check_ops("", "cpu")
    assert cpu.verified is None and cpu.reasons == []


def test_cpu_expectation_and_partial_offload(h100_log: str) -> None:
    on_cpu = check_ops(h100_log, "cpu")
    assert on_cpu.verified is False
    assert on_cpu.off_device_count == 341
    assert on_cpu.reasons[0].startswith("RMS_NORM runs on CUDA0 in 33 nodes (norm-0, ")
    assert on_cpu.reasons[0].endswith(", expected CPU")
    assert on_cpu.reasons[-1] == "and 4 more ops off the expected device"  # not a page of them
    partial = check_ops(move_node_line(h100_log, "node_98"), "cuda", full_offload=False)
    assert partial.verified is None and partial.reasons == []


def test_report_lines_keep_the_verdict(h100_log: str) -> None:
    kept = report_lines(h100_log)
    assert len(kept) < len(h100_log) / 3
    assert not any(ln.startswith(("llama_", "load_tensors")) for ln in kept.splitlines())
    # Each distinct report once: the 1-token and the 512-token reserved graphs, the decode.
    everything = [r.model_dump() for r in parse_op_reports(h100_log)]
    distinct = [r.model_dump() for r in parse_op_reports(kept)]
    assert [r["reserve_tokens"] for r in distinct] == [1, 512, None]
    assert all(r in distinct for r in everything)
    assert check_ops(kept, "cuda") == check_ops(h100_log, "cuda").model_copy(update={"reports": 3})
    edited = report_lines(move_to_cpu_split(h100_log, "node_98"))
    assert check_ops(edited, "cuda").reasons == ["FLASH_ATTN (node_98, layer 2) runs on CPU"]
