"""CPU builds without llama.cpp's AMX code path (tuner/builds/cpuflags.py): the installed library,
the flags' effect on a compiler targeting an AMX CPU, and every `tuner build` plan."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tuner.builds.buildmake import plan_build
from tuner.builds.cpuflags import AMX_MARK, NO_AMX, cmake_flag_args, has_amx, no_amx_flags, with_flags

X86 = platform.machine().lower() in {"x86_64", "amd64"}


def _system_info() -> str:
    """The installed library's llama_print_system_info(), in a process of its own (the test
    process never imports llama_cpp)."""
    code = "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120).stdout


def test_the_installed_library_has_no_amx_path() -> None:
    info = _system_info()
    assert "CPU :" in info, info  # the line was read: a CPU backend reports its features
    assert AMX_MARK not in info, f"llama-cpp-python was built with the AMX path: {info}"
    assert not has_amx(info)
    # scripts/install.sh's check of the same library (the script, run as install.sh runs it).
    script = Path(__file__).parent.parent / "tuner" / "builds" / "cpuflags.py"
    assert subprocess.run([sys.executable, str(script), "--check-installed"],
                          timeout=120).returncode == 0


def _defines(*flags: str) -> set[str]:
    out = subprocess.run(["cc", *flags, "-dM", "-E", "-x", "c", "/dev/null"],
                         capture_output=True, text=True, check=True).stdout
    return {line.split()[1] for line in out.splitlines() if line.startswith("#define")}


@pytest.mark.skipif(not X86 or shutil.which("cc") is None, reason="x86-64 C compiler flags")
@pytest.mark.parametrize("before", [True, False], ids=["flags-first", "march-first"])
def test_the_flags_remove_amx_and_keep_avx512_on_an_amx_cpu(before: bool) -> None:
    """A Sapphire Rapids target stands for `-march=native` on a Xeon with AMX: llama.cpp's AMX
    code compiles only under __AMX_INT8__, which the flags remove whatever their order, while
    AVX-512 (and its VNNI and BF16) stays."""
    flags = no_amx_flags()
    assert flags == list(NO_AMX)
    plain = _defines("-march=sapphirerapids")
    assert {"__AMX_INT8__", "__AMX_TILE__"} <= plain  # the premise: the target has AMX
    target = ["-march=sapphirerapids"]
    got = _defines(*(flags + target if before else target + flags))
    assert not {d for d in got if d.startswith("__AMX")}, got
    assert {"__AVX512F__", "__AVX512VNNI__", "__AVX512BF16__", "__AVX2__"} <= got


def test_no_flags_off_x86() -> None:
    assert no_amx_flags(machine="aarch64") == []


def test_cmake_args_keep_the_callers_flags() -> None:
    args = cmake_flag_args({"CFLAGS": "-O2 -g", "CXXFLAGS": ""})
    if not X86:
        assert args == []
        return
    assert args == [f"-DCMAKE_C_FLAGS=-O2 -g {' '.join(NO_AMX)}",
                    f"-DCMAKE_CXX_FLAGS={' '.join(NO_AMX)}"]
    assert with_flags(None, ["-x"]) == "-x"


@pytest.mark.skipif(not X86, reason="x86-64 only")
@pytest.mark.parametrize("variant", ["cpu", "default", "force-cublas"])
def test_every_tuner_build_is_planned_without_amx(variant: str, tmp_path: Path) -> None:
    plan = plan_build(variant, source=None, builds_dir=tmp_path)
    configure = next(c for c in plan.commands if c[:2] == ["cmake", "-S"])
    c_flags = next(a for a in configure if a.startswith("-DCMAKE_C_FLAGS="))
    cxx_flags = next(a for a in configure if a.startswith("-DCMAKE_CXX_FLAGS="))
    for flag in NO_AMX:
        assert flag in c_flags.split("=", 1)[1].split()
        assert flag in cxx_flags.split("=", 1)[1].split()
    assert c_flags in plan.cmake_args  # recorded in build.json with the rest
