"""buildinfo: the system-info text of real llama.cpp builds, and the forms other builds print."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner.builds.buildinfo import BuildFlags, fa_supports, find_system_info, parse_system_info, variant_of
from tuner.errors import BadInput

FIXTURES = Path(__file__).parent / "fixtures"
DEFAULT = (FIXTURES / "cuda-sysinfo-default.txt").read_text()
CUBLAS = (FIXTURES / "cuda-sysinfo-force-cublas.txt").read_text()
DEFAULT_PAIRS = [("q4_0", "q4_0"), ("q8_0", "q8_0"), ("f16", "f16"), ("bf16", "bf16")]


def _cpu_line() -> str:
    lines = (FIXTURES / "cpu-build-load.log").read_text().splitlines()
    return next(line for line in lines if line.startswith("CPU : "))


def test_default_cuda_build() -> None:
    flags = parse_system_info(DEFAULT)
    assert variant_of(flags) == "default"
    assert flags.cuda and flags.backends == ["CUDA", "CPU"]
    assert flags.archs == ["900"]
    assert flags.cuda_graphs is True
    assert not flags.force_cublas and not flags.force_mmq
    assert flags.fa_quants == DEFAULT_PAIRS and not flags.fa_all_quants
    assert flags.raw.startswith("CUDA : ARCHS = 900")
    assert "ggml_cuda_init" not in flags.raw  # the device lines around it are not the flags


def test_force_cublas_build() -> None:
    flags = parse_system_info(CUBLAS)
    assert flags.force_cublas and not flags.force_mmq
    assert variant_of(flags) == "force-cublas"
    assert flags.fa_quants == DEFAULT_PAIRS


def test_force_mmq_build() -> None:
    flags = parse_system_info(CUBLAS.replace("FORCE_CUBLAS", "FORCE_MMQ"))
    assert flags.force_mmq and not flags.force_cublas
    assert variant_of(flags) == "force-mmq"


def test_cpu_build() -> None:
    flags = parse_system_info(_cpu_line())
    assert not flags.cuda
    assert flags.backends == ["CPU"]
    assert flags.cuda_graphs is None and flags.archs == [] and flags.fa_quants == []
    assert variant_of(flags) == "cpu"


def test_whole_load_log_yields_its_build() -> None:
    text = (FIXTURES / "cuda-h100-full-offload.log").read_text()
    flags = parse_system_info(text)
    assert variant_of(flags) == "default" and flags.archs == ["900"]


def test_graphs_not_compiled_in() -> None:
    flags = parse_system_info(DEFAULT.replace("USE_GRAPHS = 1 | ", ""))
    assert flags.cuda and flags.cuda_graphs is False


def test_llama_server_prefix_and_featureless_backend() -> None:
    line = DEFAULT.splitlines()[-1]
    served = parse_system_info(f"system_info: n_threads = 8 (n_threads_batch = 8) / 16 | {line}")
    assert served.backends == ["CUDA", "CPU"] and served.fa_quants == DEFAULT_PAIRS
    bare = parse_system_info("CUDA : CPU : SSE3 = 1 | AVX2 = 1 | ")
    assert bare.cuda and bare.backends == ["CUDA", "CPU"] and bare.archs == []


def test_fa_supports_listed_pairs_only() -> None:
    flags = parse_system_info(DEFAULT)
    assert fa_supports(flags, "q8_0", "q8_0")
    assert fa_supports(flags, "F16", "f16")
    assert not fa_supports(flags, "q8_0", "q4_0")
    assert not fa_supports(flags, "q5_0", "q5_0")


def test_fa_supports_cpu_build_every_pair() -> None:
    flags = parse_system_info(_cpu_line())
    assert fa_supports(flags, "q8_0", "q4_0") and fa_supports(flags, "iq4_nl", "q5_1")


def test_fa_all_quants_forms() -> None:
    all_new = parse_system_info(DEFAULT.replace("q4_0-q4_0,q8_0-q8_0,f16-f16,bf16-bf16", "all"))
    assert all_new.fa_all_quants and all_new.fa_quants == []
    assert fa_supports(all_new, "q8_0", "q4_0") and fa_supports(all_new, "q5_1", "bf16")
    assert not fa_supports(all_new, "iq4_nl", "iq4_nl")
    old = parse_system_info("CUDA : ARCHS = 890 | FA_ALL_QUANTS = 1 | CPU : AVX2 = 1 | ")
    assert old.fa_all_quants and fa_supports(old, "q4_1", "q5_0")


def test_unknown_fa_form_is_tolerated() -> None:
    odd = parse_system_info(DEFAULT.replace("q4_0-q4_0,q8_0-q8_0,f16-f16,bf16-bf16",
                                            "vec-only(fast),q8_0-q8_0"))
    assert odd.fa_quants == [("q8_0", "q8_0")] and not odd.fa_all_quants
    assert fa_supports(odd, "q8_0", "q8_0") and not fa_supports(odd, "q4_0", "q4_0")


def test_build_without_fa_list_has_the_classic_pairs() -> None:
    old = parse_system_info("CUDA : ARCHS = 860 | USE_GRAPHS = 1 | CPU : AVX2 = 1 | ")
    assert old.fa_quants == [] and not old.fa_all_quants
    assert fa_supports(old, "q8_0", "q8_0") and not fa_supports(old, "bf16", "bf16")


def test_no_system_info_line() -> None:
    assert find_system_info("llama_context: n_ctx = 4096\nhello | world") is None
    with pytest.raises(BadInput, match="no llama.cpp system-info line"):
        parse_system_info("ggml_cuda_init: found 1 CUDA devices\n")


def test_flags_forbid_unknown_fields() -> None:
    with pytest.raises(ValueError):
        BuildFlags(cuda=True, cuda_graph=True)  # type: ignore[call-arg]
