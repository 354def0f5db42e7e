"""placement: evidence from real llama.cpp load logs, and variants of them doctored here to show
that each way of not running on the GPU is caught with a precise reason."""

from __future__ import annotations

import re
import time
from pathlib import Path

from tuner.builds.buildinfo import parse_system_info
from tuner.evidence.placement import Expectation, is_cpu_device, is_cuda_device, parse_load_log, summarize, verify

FIXTURES = Path(__file__).parent / "fixtures"
CUDA_LOG = (FIXTURES / "cuda-h100-full-offload.log").read_text()
CPU_LOG = (FIXTURES / "cpu-build-load.log").read_text()
CUBLAS_INFO = (FIXTURES / "cuda-sysinfo-force-cublas.txt").read_text()
CUDA = Expectation(device="cuda")


def _layers_to_cpu(text: str, layers: range) -> str:
    for i in layers:
        text = text.replace(f"layer {i:3d} assigned to device CUDA0",
                            f"layer {i:3d} assigned to device CPU")
    return text


def _kv_to_cpu(text: str, layers: range) -> str:
    for i in layers:
        text = text.replace(f"llama_kv_cache: layer {i:3d}: dev = CUDA0",
                            f"llama_kv_cache: layer {i:3d}: dev = CPU")
    return text


def test_cuda_log_evidence() -> None:
    ev = parse_load_log(CUDA_LOG)
    assert ev.is_load_log
    assert ev.cuda_devices == ["NVIDIA H100 80GB HBM3"]
    assert len(ev.layer_devices) == 33 and set(ev.layer_devices.values()) == {"CUDA0"}
    assert (ev.offloaded_layers, ev.total_layers) == (33, 33)
    assert sorted(ev.kv_layer_devices) == list(range(32))
    assert set(ev.kv_layer_devices.values()) == {"CUDA0"}
    assert ev.model_buffers_mib == {"CPU_Mapped": 70.31, "CUDA0": 3577.56}
    assert ev.kv_buffers_mib == {"CUDA0": 2048.0}
    assert ev.compute_buffers_mib == {"CUDA0": 92.51, "CUDA_Host": 20.01}
    assert ev.flash_attn == "enabled"
    assert (ev.n_ctx, ev.n_batch, ev.n_ubatch) == (4096, 2048, 512)
    assert ev.kv_types == ("f16", "f16")
    assert ev.build is not None and ev.build.cuda and ev.build.archs == ["900"]
    assert ev.errors == []


def test_full_offload_is_verified_despite_the_cpu_mapped_buffer() -> None:
    ev = parse_load_log(CUDA_LOG)
    assert ev.model_buffers_mib["CPU_Mapped"] > 0  # token embeddings stay on the host
    verdict = verify(ev, CUDA)
    assert verdict.verified and verdict.reasons == []
    assert verdict.summary == "33/33 layers on CUDA0, KV cache on CUDA0, build default"


def test_full_expectation_of_every_setting() -> None:
    ex = Expectation(device="cuda", n_gpu_layers=99, build="default", type_k="f16",
                     type_v="f16", flash_attn=True)
    assert verify(parse_load_log(CUDA_LOG), ex).verified


def test_cpu_build_log() -> None:
    ev = parse_load_log(CPU_LOG)
    assert ev.is_load_log and ev.cuda_devices == []
    assert ev.layer_devices == {0: "CPU", 1: "CPU", 2: "CPU"}
    assert ev.offloaded_layers is None and ev.total_layers is None
    assert ev.kv_layer_devices == {0: "CPU", 1: "CPU"} and ev.kv_buffers_mib == {"CPU": 0.06}
    assert ev.build is not None and not ev.build.cuda
    assert (ev.n_ctx, ev.flash_attn) == (256, "disabled")


def test_cpu_build_fails_cuda_and_passes_cpu() -> None:
    ev = parse_load_log(CPU_LOG)
    verdict = verify(ev, CUDA)
    assert not verdict.verified
    assert verdict.reasons[0] == "the library has no CUDA backend (a CPU-only build)"
    assert "3 of 3 layers on CPU (layers 0-2), not on the GPU" in verdict.reasons
    assert verdict.summary == "3/3 layers on CPU, KV cache on CPU, build cpu"
    cpu = verify(ev, Expectation(device="cpu", build="cpu"))
    assert cpu.verified and cpu.reasons == []


def test_layers_left_on_cpu() -> None:
    verdict = verify(parse_load_log(_layers_to_cpu(CUDA_LOG, range(3))), CUDA)
    assert not verdict.verified
    assert verdict.reasons == ["3 of 33 layers on CPU (layers 0-2), not on the GPU"]
    assert verdict.summary.startswith("30/33 layers on CUDA0, 3/33 layers on CPU")


def test_offloaded_count_short() -> None:
    verdict = verify(parse_load_log(CUDA_LOG.replace("offloaded 33/33", "offloaded 20/33")), CUDA)
    assert verdict.reasons == ["llama.cpp offloaded 20/33 layers to GPU, expected 33/33"]


def test_one_kv_layer_on_cpu() -> None:
    verdict = verify(parse_load_log(_kv_to_cpu(CUDA_LOG, range(5, 6))), CUDA)
    assert verdict.reasons == ["KV cache of 1 of 32 layers on CPU (layer 5), not on the GPU"]


def test_kv_buffer_on_host_without_layer_lines() -> None:
    text = re.sub(r"llama_kv_cache: layer +\d+: dev = CUDA0\n", "", CUDA_LOG)
    text = text.replace("     CUDA0 KV buffer size", "       CPU KV buffer size")
    verdict = verify(parse_load_log(text), CUDA)
    assert verdict.reasons == ["a 2048.00 MiB KV buffer on CPU, not on the GPU"]


def test_no_kv_evidence_at_all() -> None:
    text = re.sub(r"llama_kv_cache: .*\n", "", CUDA_LOG)
    assert verify(parse_load_log(text), CUDA).reasons == ["no KV cache placement in the log"]


def test_build_variant_mismatch() -> None:
    info = CUBLAS_INFO.splitlines()[-1]
    text = re.sub(r"^CUDA : ARCHS.*$", info, CUDA_LOG, flags=re.M)
    verdict = verify(parse_load_log(text), Expectation(device="cuda", build="default"))
    assert verdict.reasons == ["expected build default, library reports force-cublas"]
    assert verdict.summary.endswith("build force-cublas")


def test_worker_flags_override_the_log() -> None:
    ev = parse_load_log(CUDA_LOG)  # the log's own line says default
    flags = parse_system_info(CUBLAS_INFO)
    assert verify(ev, Expectation(device="cuda", build="force-cublas"), build=flags).verified
    assert not verify(ev, Expectation(device="cuda", build="force-cublas")).verified


def test_kv_types_and_flash_attention_mismatch() -> None:
    ev = parse_load_log(CUDA_LOG)
    verdict = verify(ev, Expectation(device="cuda", type_k="q8_0", type_v="f16",
                                     flash_attn=False))
    assert verdict.reasons == ["K cache is f16, expected q8_0",
                               "flash attention enabled, expected disabled"]


def test_flash_attention_auto_resolved() -> None:
    text = CUDA_LOG.replace(
        "sched_reserve: reserving ...",
        "sched_reserve: reserving ...\nsched_reserve: Flash Attention was auto, set to disabled")
    text = re.sub(r"flash_attn +\= enabled", "flash_attn            = auto", text)
    ev = parse_load_log(text)
    assert ev.flash_attn == "disabled"
    assert verify(ev, Expectation(device="cuda", flash_attn=True)).reasons == [
        "flash attention disabled, expected enabled"]
    unresolved = parse_load_log(re.sub(r"flash_attn +\= enabled", "flash_attn = auto", CUDA_LOG))
    reasons = verify(unresolved, Expectation(device="cuda", flash_attn=True)).reasons
    assert reasons == ["the log does not show whether flash attention ran (flash_attn = auto), "
                       "expected enabled"]


def test_no_layer_assignments() -> None:
    text = re.sub(r"load_tensors: layer .*\n", "", CUDA_LOG)
    verdict = verify(parse_load_log(text), CUDA)
    assert not verdict.verified and verdict.reasons == ["no layer assignments in the log"]


def test_partial_offload() -> None:
    # What n_gpu_layers=20 looks like: the first 13 layers and their KV cache stay on the CPU.
    text = _kv_to_cpu(_layers_to_cpu(CUDA_LOG, range(13)), range(13))
    text = text.replace("offloaded 33/33", "offloaded 20/33")
    ev = parse_load_log(text)
    assert verify(ev, Expectation(device="cuda", n_gpu_layers=20)).verified
    assert not verify(ev, CUDA).verified
    assert verify(ev, Expectation(device="cuda", n_gpu_layers=25)).reasons == [
        "20 layers assigned to a CUDA device, expected 25",
        "llama.cpp offloaded 20/33 layers to GPU, expected 25/33"]
    moved = parse_load_log(_kv_to_cpu(text, range(20, 21)))
    assert verify(moved, Expectation(device="cuda", n_gpu_layers=20)).reasons == [
        "KV cache of 1 layers on CPU (layer 20), away from their layer's device"]


def test_cpu_expectation_on_a_gpu_log() -> None:
    verdict = verify(parse_load_log(CUDA_LOG), Expectation(device="cpu"))
    assert not verdict.verified
    assert "33 of 33 layers on CUDA0 (layers 0-32), expected all on CPU" in verdict.reasons


def test_cpu_run_with_gpu_compute_buffer() -> None:
    text = CPU_LOG.replace(
        "sched_reserve:        CPU compute buffer size",
        "sched_reserve:      CUDA0 compute buffer size =   100.00 MiB\n"
        "sched_reserve:        CPU compute buffer size")
    reasons = verify(parse_load_log(text), Expectation(device="cpu")).reasons
    assert len(reasons) == 1 and reasons[0].startswith("a 100.00 MiB compute buffer on CUDA0")


def test_last_context_counts() -> None:
    start = CUDA_LOG.index("llama_context: constructing llama_context")
    second = _kv_to_cpu(CUDA_LOG[start:], range(32)).replace(
        "     CUDA0 KV buffer size", "       CPU KV buffer size")
    ev = parse_load_log(CUDA_LOG + second)
    assert set(ev.kv_layer_devices.values()) == {"CPU"}
    assert ev.kv_buffers_mib == {"CPU": 2048.0}  # replaced, not added to the first context's
    assert ev.model_buffers_mib == {"CPU_Mapped": 70.31, "CUDA0": 3577.56}


def test_errors_collected_but_metadata_ignored() -> None:
    text = CUDA_LOG + (
        "llama_model_loader: - kv  21: tokenizer.chat_template str = {{ raise error }}\n"
        "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 9000.00 MiB on device 0: "
        "cudaMalloc failed: out of memory\n"
        "llama_model_load: error loading model: unable to allocate CUDA0 buffer\n")
    ev = parse_load_log(text)
    assert len(ev.errors) == 2
    assert ev.errors[0].endswith("cudaMalloc failed: out of memory")
    assert ev.errors[1].startswith("llama_model_load: error loading model")


def test_older_log_prefixes() -> None:
    text = CUDA_LOG.replace("load_tensors:", "llm_load_tensors:").replace(
        "llama_kv_cache:", "llama_kv_cache_init:").replace(
        "llama_context:", "llama_new_context_with_model:")
    ev = parse_load_log(text)
    assert len(ev.layer_devices) == 33 and ev.offloaded_layers == 33
    assert ev.kv_buffers_mib == {"CUDA0": 2048.0} and ev.n_ctx == 4096
    assert verify(ev, CUDA).verified


def test_tolerant_of_any_text() -> None:
    for text in ("", "\n\n", "hello | world : a = b", "\x00\x01\ufffd" * 500,
                 "load_tensors:   CUDA0 model buffer size =  1.2.3 MiB\n",
                 "sched_reserve:      CUDA0 compute buffer size =   ..1 MiB\n",
                 "load_tensors: layer x assigned to device\nllama_kv_cache: layer : dev =\n"):
        ev = parse_load_log(text)
        assert ev.layer_devices == {} and ev.offloaded_layers is None
    assert not parse_load_log("just some text\n").is_load_log
    verdict = verify(parse_load_log(""), CUDA)
    assert not verdict.verified and "no layer assignments in the log" in verdict.reasons


def test_quick_on_a_long_log() -> None:
    text = CUDA_LOG * 20  # over 60,000 lines: twenty loads, the last one counts
    # A guard against a parse that grows faster than the log (0.36 s of CPU here), read as this
    # process's CPU time: tests side by side stretch the wall clock, not the work done.
    t0 = time.process_time()
    ev = parse_load_log(text)
    assert time.process_time() - t0 < 3.0
    assert len(ev.layer_devices) == 33 and ev.model_buffers_mib["CUDA0"] == 3577.56


def test_device_names() -> None:
    assert is_cuda_device("CUDA0") and is_cuda_device("CUDA12")
    assert not is_cuda_device("CUDA_Host") and not is_cuda_device("CPU")
    assert is_cpu_device("CPU") and is_cpu_device("CPU_Mapped") and not is_cpu_device("CUDA0")


def test_summary_without_evidence() -> None:
    assert summarize(parse_load_log("")) == ("no layer assignments, KV cache not in the log, "
                                             "build unknown")
