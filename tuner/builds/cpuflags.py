"""The compiler flags every llama.cpp build of the tuner gets: llama.cpp's AMX code path off.

On an Intel Xeon with AMX (Sapphire Rapids and later: ``amx_int8 amx_tile`` in /proc/cpuinfo) a
build made for the native CPU compiles ggml's AMX backend, which puts the weights kept on the
CPU into an ``AMX model buffer`` and then crashes (SIGSEGV) in the first batched decode
(llama.cpp issue 20824, open). That buffer holds every weight of a CPU sweep and the host's layers
of a partial offload. The AMX code compiles only where ``__AMX_INT8__`` is defined, so these flags
turn it off and leave everything else native: AVX2, AVX-512, VNNI and BF16 stay as the CPU has
them (``-march=native`` sets only the ISA flags not given explicitly, so the flags hold whatever
their order). tests/test_cpuflags.py proves it with the compiler here on a Sapphire Rapids target.

Standard library only: ``scripts/install.sh`` runs this file as a script, before tuner is
installed: it prints the flags for the llama-cpp-python build it makes, and with
``--check-installed`` (in the virtual environment) says whether the installed library is
importable and free of the AMX path.
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping

NO_AMX = ("-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16")
# What a library built with the AMX path says in llama_print_system_info().
AMX_MARK = "AMX_INT8 = 1"
_X86 = {"x86_64", "amd64", "i386", "i686"}


def no_amx_flags(compiler: str | None = None, machine: str | None = None) -> list[str]:
    """The flags that keep llama.cpp's AMX code out of a build on this machine: none off x86, and
    none where the C compiler does not know them (it cannot emit AMX code either)."""
    if (machine or platform.machine()).lower() not in _X86:
        return []
    cc = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return list(NO_AMX)  # no compiler to ask: the build will fail on its own first
    try:
        ok = subprocess.run([*shlex.split(cc), *NO_AMX, "-E", "-x", "c", os.devnull],
                            capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = True  # cannot ask: pass the flags, the compile will say if they are wrong
    return list(NO_AMX) if ok else []


def with_flags(value: str | None, flags: list[str]) -> str:
    """A CFLAGS/CXXFLAGS value with ``flags`` appended to what was there (kept as given)."""
    return " ".join(filter(None, [(value or "").strip(), *flags]))


def cmake_flag_args(env: Mapping[str, str] | None = None) -> list[str]:
    """``-DCMAKE_C_FLAGS=...`` and ``-DCMAKE_CXX_FLAGS=...`` for a CMake configure: the
    environment's CFLAGS/CXXFLAGS plus the AMX-off flags (none when neither applies)."""
    env = os.environ if env is None else env
    flags = no_amx_flags()
    if not flags:
        return []
    return [f"-DCMAKE_C_FLAGS={with_flags(env.get('CFLAGS'), flags)}",
            f"-DCMAKE_CXX_FLAGS={with_flags(env.get('CXXFLAGS'), flags)}"]


def has_amx(system_info: str) -> bool:
    """Whether a library's llama_print_system_info() shows the AMX path compiled in."""
    return AMX_MARK in system_info


def pip_install_command(version: str | None = None, cuda: bool = False) -> str:
    """The pip command that (re)builds llama-cpp-python here without the AMX path, for CUDA or
    the CPU (``version``: that release; None: the newest)."""
    flags = " ".join(NO_AMX) if platform.machine().lower() in _X86 else ""
    cflags = f'CFLAGS="{flags}" CXXFLAGS="{flags}" ' if flags else ""
    cmake = 'CMAKE_ARGS="-DGGML_CUDA=on" ' if cuda else ""
    pin = f"=={version}" if version else ""
    return (f"{cmake}{cflags}pip install --force-reinstall "
            f"--no-cache-dir 'llama-cpp-python[server]{pin}'")


if __name__ == "__main__":
    if sys.argv[1:] == ["--check-installed"]:  # scripts/install.sh: exit 1 unless importable
        import llama_cpp  # and built without the AMX path

        sys.exit(1 if has_amx(llama_cpp.llama_print_system_info().decode()) else 0)
    # scripts/install.sh: the flags for this machine's compiler, one line
    sys.stdout.write(" ".join(no_amx_flags()) + "\n")


CUDA_INSTALL_HINT = f"install a CUDA build: {pip_install_command(cuda=True)}"
