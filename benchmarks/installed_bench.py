"""A llama-bench for a library folder that has none (benchmark tooling, CUDA machine): the
installed llama-cpp-python's own libraries (the package ships no llama-bench, so its settings
had no reference in run 19 of docs/benchmarks.md), or a build a sweep made for itself (it
builds the libraries only, tuner/builds/autobuild.py).

llama-bench is compiled from the installed version's vendored llama.cpp (the same source
archive the package was built from) without any GPU backend and without a run path, so the
libraries it loads are the ones ``LD_LIBRARY_PATH`` names: ``--lib`` (by default the installed
package's ``llama_cpp/lib``: its CUDA ``libggml``, ``libllama``), then this folder's ``lib``
for llama-bench's own helper libraries (``libllama-bench-impl``, ``libllama-common``), which
the library folder does not have. Only the CPU parts compile (about a minute on 16 cores): no
CUDA kernel is built again, so the kernels llama-bench runs are the library folder's.
``--from`` reuses a llama-bench this script made for another folder (nothing compiles).

The result is laid out as a build folder of ``tuner build`` is (``bin/llama-bench``,
``lib/``, and the search path in ``LD_LIBRARY_PATH``), for ``benchmarks/fidelity_space.py
--bench BUILD=DIR``. Before it says done, it checks with ``ldd`` that every llama and ggml
library resolves into the library folder.

    python3 benchmarks/installed_bench.py --source SDIST --out DIR [--lib LIBDIR] [-j N]
    python3 benchmarks/installed_bench.py --from DIR --lib LIBDIR --out DIR2
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tuner.builds.buildmake import BASE_CMAKE_ARGS, BENCH_TARGET, sdist_version  # noqa: E402
from tuner.builds.catalog import _installed_lib_dir, installed_version  # noqa: E402
from tuner.errors import TunerError  # noqa: E402

# tuner build's options, without its run path and without any GPU backend: the dynamic loader
# takes the libraries LD_LIBRARY_PATH names, and only the CPU parts compile.
CMAKE_ARGS = [a for a in BASE_CMAKE_ARGS if "RPATH" not in a] + [
    "-DGGML_CUDA=OFF", "-DCMAKE_SKIP_RPATH=ON", "-DGGML_NATIVE=OFF"]
FIT_TARGET = "llama-fit-params"  # prints the -c / -ngl llama.cpp's --fit would choose
# The package's libraries: llama-bench must load these from the installed package, not ours.
PACKAGE_LIBS = re.compile(r"^\s*(lib(?:llama|ggml[\w-]*)\.so\.\d+) => (\S+)", re.M)


def search_path(out: Path, installed: Path) -> str:
    """The installed package first, then llama-bench's helper libraries."""
    return f"{installed}:{out / 'lib'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path,
                    help="the llama-cpp-python source archive the package was built from")
    ap.add_argument("--from", dest="reuse", type=Path,
                    help="a folder this script made: its llama-bench, nothing compiled")
    ap.add_argument("--lib", type=Path, help="the libraries llama-bench is to load "
                    "(default: the installed llama-cpp-python's)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--compile-only", action="store_true",
                    help="compile into --out and stop: the installed libraries need not be there "
                         "yet (a CUDA install still compiling); --check-only later checks them")
    ap.add_argument("--check-only", action="store_true",
                    help="check the llama-bench a --compile-only run left in --out")
    a = ap.parse_args()
    if a.compile_only:
        if a.source is None:
            raise SystemExit("--compile-only needs --source")
        compile_bench(a.source, a.out, None, a.jobs)
        print(f"compiled {a.out / 'bin' / 'llama-bench'} (not checked yet)")
        return
    version = installed_version()
    lib = a.lib or _installed_lib_dir()
    if lib is None or not (lib / "libllama.so").exists():
        raise SystemExit(f"no libllama.so in {lib or 'the installed llama_cpp package'}")
    installed = lib.absolute()
    if a.check_only:
        if not (a.out / "bin" / "llama-bench").is_file():
            raise SystemExit(f"no llama-bench in {a.out / 'bin'}: run --compile-only first")
        if a.source is not None:
            _require_version(a.source, version)
    elif a.reuse is not None:
        shutil.copytree(a.reuse / "bin", a.out / "bin", dirs_exist_ok=True)
        shutil.copytree(a.reuse / "lib", a.out / "lib", dirs_exist_ok=True)
    elif a.source is None:
        raise SystemExit("--source or --from is needed")
    else:
        _require_version(a.source, version)
        compile_bench(a.source, a.out, installed, a.jobs)
    check(a.out, installed, version)


def _require_version(source: Path, version: str) -> None:
    """The source archive is llama-cpp-python ``version`` (the installed one), or one line."""
    try:
        src_version = sdist_version(source)
    except TunerError as exc:  # not there, or not a llama-cpp-python sdist: one line
        raise SystemExit(exc.message) from None
    if src_version != version:
        raise SystemExit(f"{source.name} is llama-cpp-python {src_version}, the installed "
                         f"version is {version}")


def compile_bench(source: Path, out: Path, installed: Path | None, jobs: int) -> None:
    """``installed`` None: its libraries are not known yet, and llama-bench's own helper
    libraries that share a name with the package's are pruned from ``out/lib`` by the check."""
    with tempfile.TemporaryDirectory(prefix="installed-bench-") as tmp:
        with tarfile.open(source) as tar:
            tar.extractall(tmp, filter="data")
        src = next(Path(tmp).glob("*/vendor/llama.cpp"))
        build = Path(tmp) / "cmake"
        subprocess.run(["cmake", "-S", str(src), "-B", str(build), "-G", "Ninja", *CMAKE_ARGS],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", str(build), "--target", BENCH_TARGET,
                        "-j", str(jobs)], check=True, stdout=subprocess.DEVNULL)
        # llama.cpp's own fit (llama-fit-params), the reference of benchmarks/partial_offload.py;
        # llama-bench is made whether or not it builds.
        fit = subprocess.run(["cmake", "--build", str(build), "--target", FIT_TARGET,
                              "-j", str(jobs)], check=False, stdout=subprocess.DEVNULL)
        (out / "bin").mkdir(parents=True, exist_ok=True)
        (out / "lib").mkdir(parents=True, exist_ok=True)
        shutil.copy2(build / "bin" / "llama-bench", out / "bin" / "llama-bench")
        if fit.returncode == 0 and (build / "bin" / FIT_TARGET).is_file():
            shutil.copy2(build / "bin" / FIT_TARGET, out / "bin" / FIT_TARGET)
        for helper in (build / "bin").glob("lib*.so*"):  # llama-bench's own, not the package's
            if installed is None or not (installed / helper.name).exists():
                shutil.copy2(helper, out / "lib" / helper.name, follow_symlinks=True)


def check(out: Path, installed: Path, version: str) -> None:
    """Every llama and ggml library llama-bench loads comes from ``installed``."""
    for helper in (out / "lib").glob("lib*.so*"):  # a --compile-only run kept them all
        if (installed / helper.name).exists():
            helper.unlink()
    env = {**os.environ, "LD_LIBRARY_PATH": search_path(out, installed)}
    ldd = subprocess.run(["ldd", str(out / "bin" / "llama-bench")], capture_output=True,
                         text=True, env=env, check=True).stdout
    found = dict(PACKAGE_LIBS.findall(ldd))
    wrong = {n: p for n, p in found.items() if Path(p).resolve().parent != installed.resolve()}
    if "libllama.so.0" not in found or wrong:
        raise SystemExit(f"llama-bench would not load the installed libraries: {wrong or ldd}")
    (out / "LD_LIBRARY_PATH").write_text(search_path(out, installed) + "\n")
    print(f"llama-bench of llama-cpp-python {version} for the libraries in {installed}: "
          f"{out / 'bin' / 'llama-bench'}; it loads " + ", ".join(sorted(found)))


if __name__ == "__main__":
    sys.exit(main())
