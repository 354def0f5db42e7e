"""Kernel builds: refusing bad requests, the commands a build runs, finding and picking builds,
and probing a real library. CI has no GPU and no nvcc, so no test compiles llama.cpp; where a
real library is needed, the installed package's own CPU library stands in for a build."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from tuner.builds import buildmake, catalog as builds
from tuner.builds.buildinfo import parse_system_info, variant_of
from tuner.builds.buildmake import build_variant, sdist_version
from tuner.builds.catalog import (
    BuildRecord,
    discover_builds,
    installed_version,
    list_builds,
    probe_library,
    resolve_build,
)
from tuner.errors import BadInput, EnvironmentUnfit, TunerError

# ../shared beside the checkout, where the team keeps the trimmed 0.3.36 source archive.
SHARED_SDIST = Path(__file__).resolve().parents[2] / "shared/gpu/llama-cpp-python-0.3.36-src.tar.gz"


def installed_lib() -> Path:
    lib = builds._installed_lib_dir()
    assert lib is not None and (lib / "libllama.so").is_file()
    return lib


def make_sdist(tmp_path: Path, version: str, *, pkg_info: bool = True,
               cmakelists: str = "project(x NONE)\n") -> Path:
    """A tiny stand-in sdist: its PKG-INFO, and a vendor/llama.cpp that is no llama.cpp."""
    path = tmp_path / f"llama_cpp_python-{version}.tar.gz"
    top = f"llama_cpp_python-{version}"
    files = {f"{top}/vendor/llama.cpp/CMakeLists.txt": cmakelists.encode()}
    if pkg_info:
        files[f"{top}/PKG-INFO"] = (f"Metadata-Version: 2.1\nName: llama_cpp_python\n"
                                    f"Version: {version}\n\nlong description\n").encode()
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_record(builds_dir: Path, name: str, **changes: object) -> Path:
    fields: dict[str, object] = dict(
        variant="cpu", version=installed_version(), cmake_args=["-DBUILD_SHARED_LIBS=ON"],
        cuda_arch=None, source="test.tar.gz", source_sha256="0" * 64,
        started="2025-01-01T00:00:00+00:00", finished="2025-01-01T00:05:00+00:00",
        duration_s=300.0, system_info="CPU : AVX2 = 1 |", flags_summary="cpu", bench=None)
    fields.update(changes)
    folder = builds_dir / name
    folder.mkdir(parents=True)
    (folder / "build.json").write_text(BuildRecord(**fields).model_dump_json())  # type: ignore[arg-type]
    return folder


# --- refusals -----------------------------------------------------------------------------


def test_sdist_version_reads_pkg_info(tmp_path: Path) -> None:
    assert sdist_version(make_sdist(tmp_path, "0.3.35")) == "0.3.35"
    (tmp_path / "bare").mkdir()
    with pytest.raises(BadInput, match="no PKG-INFO"):
        sdist_version(make_sdist(tmp_path / "bare", "0.3.35", pkg_info=False))
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(BadInput, match="cannot read source archive"):
        sdist_version(tmp_path / "junk.tar.gz")


def test_source_of_another_version_is_refused_before_anything_runs(tmp_path: Path) -> None:
    old = make_sdist(tmp_path, "0.3.35")
    with pytest.raises(BadInput) as err:
        build_variant("cpu", source=old, builds_dir=tmp_path / "builds", cuda_arch=None,
                      jobs=1)
    assert err.value.message == (f"source is llama-cpp-python 0.3.35, installed is "
                                 f"{installed_version()}: the ctypes signatures must match")
    assert not (tmp_path / "builds").exists()


@pytest.mark.parametrize("variant", ["force-foo", "Default", "installed", ""])
def test_unknown_variants_are_refused(tmp_path: Path, variant: str) -> None:
    with pytest.raises(BadInput, match="unknown variant") as err:
        build_variant(variant, source=None, builds_dir=tmp_path, cuda_arch=None, jobs=1,
                      dry_run=True)
    assert "force-cublas" in err.value.message and "\n" not in err.value.message


def test_cuda_arch_is_refused_for_the_cpu_variant(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="CUDA variants"):
        build_variant("cpu", source=None, builds_dir=tmp_path, cuda_arch="90", jobs=1,
                      dry_run=True)


# --- failed builds never look usable (real cmake on a stand-in source; nothing compiles) ----

needs_cmake = pytest.mark.skipif(not (shutil.which("cmake") and shutil.which("ninja")),
                                 reason="cmake and ninja are needed to run a build")


@needs_cmake
@pytest.mark.parametrize(("cmakelists", "error"), [
    ('message(FATAL_ERROR "boom")\n', "cmake configure failed (exit 1)"),
    ("cmake_minimum_required(VERSION 3.14)\nproject(x NONE)\n",
     "this llama.cpp has no target llama, llama-bench"),
])
def test_a_failed_build_leaves_the_previous_build_alone(tmp_path: Path, cmakelists: str,
                                                        error: str) -> None:
    source = make_sdist(tmp_path, installed_version(), cmakelists=cmakelists)
    builds_dir = tmp_path / "builds"
    write_record(builds_dir, "cpu", lib=str(installed_lib()))
    before = (builds_dir / "cpu" / "build.json").read_text()
    lines: list[str] = []
    with pytest.raises(TunerError) as err:
        build_variant("cpu", source=source, builds_dir=builds_dir, cuda_arch=None, jobs=1,
                      log=lines.append)
    assert err.value.message.startswith(error)
    assert err.value.hint == f"the build tree is kept in {builds_dir / '.cpu.partial'}"
    assert (builds_dir / "cpu" / "build.json").read_text() == before
    assert not (builds_dir / ".cpu.partial" / "build.json").exists()
    assert [b.name for b in discover_builds(builds_dir)] == ["installed", "cpu"]
    if "boom" in cmakelists:
        assert any("boom" in line for line in lines)  # cmake's output was streamed to log


@needs_cmake
def test_a_cuda_variant_needs_nvcc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tools = tmp_path / "tools"  # a PATH with cmake and ninja but no nvcc
    tools.mkdir()
    for tool in ("cmake", "ninja"):
        os.symlink(shutil.which(tool), tools / tool)  # type: ignore[arg-type]
    monkeypatch.setenv("PATH", str(tools))
    monkeypatch.delenv("CUDACXX", raising=False)
    monkeypatch.setattr(buildmake, "DEFAULT_NVCC", tmp_path / "no-cuda" / "nvcc")
    source = make_sdist(tmp_path, installed_version())
    with pytest.raises(EnvironmentUnfit, match="needs the CUDA toolkit"):
        build_variant("force-mmq", source=source, builds_dir=tmp_path / "b", cuda_arch="90",
                      jobs=1)
    assert not (tmp_path / "b").exists()


# --- dry run: the commands each variant would run -----------------------------------------

EXPECTED = {
    "default": ({"-DGGML_CUDA=on"}, {"FORCE_CUBLAS", "FORCE_MMQ"}),
    "force-cublas": ({"-DGGML_CUDA=on", "-DGGML_CUDA_FORCE_CUBLAS=on"}, {"FORCE_MMQ"}),
    "force-mmq": ({"-DGGML_CUDA=on", "-DGGML_CUDA_FORCE_MMQ=on"}, {"FORCE_CUBLAS"}),
    "cpu": (set(), {"GGML_CUDA", "CUDA_ARCHITECTURES"}),
}


@pytest.mark.parametrize("variant", sorted(EXPECTED))
def test_dry_run_commands_carry_the_variant_flags(tmp_path: Path, variant: str) -> None:
    source = make_sdist(tmp_path, installed_version())
    arch = None if variant == "cpu" else "90"
    plan = build_variant(variant, source=source, builds_dir=tmp_path / "b", cuda_arch=arch,
                         jobs=3, dry_run=True)
    configure, targets, build = plan.commands
    want, unwanted = EXPECTED[variant]
    assert want <= set(configure)
    assert not [a for a in configure if any(u in a for u in unwanted)]
    assert configure[:2] == ["cmake", "-S"]
    assert configure[2].endswith(f"llama_cpp_python-{installed_version()}/vendor/llama.cpp")
    assert configure[3:5] == ["-B", str(tmp_path / "b" / f".{variant}.partial" / "cmake")]
    for flag in ("-DBUILD_SHARED_LIBS=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_CURL=OFF",
                 "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON", "-DCMAKE_BUILD_TYPE=Release"):
        assert flag in configure
    assert "-DCMAKE_INSTALL_RPATH=$ORIGIN;$ORIGIN/../lib" in configure
    assert ("-DCMAKE_CUDA_ARCHITECTURES=90" in configure) == (arch is not None)
    assert targets[-2:] == ["--target", "help"]
    assert build[-5:] == ["--target", "llama", "llama-bench", "-j", "3"]
    assert plan.final_dir == str(tmp_path / "b" / variant)
    lib_only = build_variant(variant, source=source, builds_dir=tmp_path / "b", cuda_arch=arch,
                             jobs=3, dry_run=True, bench=False)
    assert lib_only.commands[-1][-4:] == ["--target", "llama", "-j", "3"]
    assert not (tmp_path / "b").exists()  # a dry run writes nothing


def test_dry_run_without_source_downloads_the_installed_version(tmp_path: Path) -> None:
    plan = build_variant("force-mmq", source=None, builds_dir=tmp_path, cuda_arch="86,90",
                         jobs=2, dry_run=True)
    pip = plan.commands[0]
    assert pip[1:5] == ["-m", "pip", "download", "--no-deps"]
    assert pip[-1] == f"llama-cpp-python=={installed_version()}"
    assert pip[5:7] == ["--no-binary", ":all:"]
    assert "-DCMAKE_CUDA_ARCHITECTURES=86;90" in plan.commands[1]
    assert plan.cuda_arch == "86;90"
    shell = plan.shell_lines()[1]  # quoted so that a shell keeps $ORIGIN and the ; literal
    assert "'-DCMAKE_INSTALL_RPATH=$ORIGIN;$ORIGIN/../lib'" in shell
    assert "'-DCMAKE_CUDA_ARCHITECTURES=86;90'" in shell


@pytest.mark.skipif(not SHARED_SDIST.is_file(), reason="the shared 0.3.36 sdist is not here")
def test_the_real_sdist_has_the_targets_a_build_asks_for() -> None:
    assert sdist_version(SHARED_SDIST) == "0.3.36"
    with tarfile.open(SHARED_SDIST) as tar:
        top = "llama_cpp_python-0.3.36/vendor/llama.cpp"
        bench = tar.extractfile(f"{top}/tools/llama-bench/CMakeLists.txt")
        src = tar.extractfile(f"{top}/src/CMakeLists.txt")
        assert bench is not None and src is not None
        assert "set(TARGET llama-bench)" in bench.read().decode()
        assert "add_library(llama" in src.read().decode()


# --- collecting a build's output ----------------------------------------------------------


def test_collect_turns_symlinked_names_into_hard_links(tmp_path: Path) -> None:
    out = tmp_path / "cmake" / "bin"
    out.mkdir(parents=True)
    (out / "libllama.so.0.5.0").write_bytes(b"elf")
    os.symlink("libllama.so.0.5.0", out / "libllama.so.0")
    os.symlink("libllama.so.0", out / "libllama.so")
    (out / "llama-bench").write_bytes(b"exe")
    made = buildmake._collect(out, tmp_path / "lib", tmp_path / "bin")
    names = sorted(p.name for p in (tmp_path / "lib").iterdir())
    assert names == ["libllama.so", "libllama.so.0", "libllama.so.0.5.0"]
    assert not any(p.is_symlink() for p in (tmp_path / "lib").iterdir())
    assert (tmp_path / "lib" / "libllama.so").stat().st_nlink == 3
    assert made == (True, False)  # llama-bench, no llama-server
    assert (tmp_path / "bin" / "llama-bench").read_bytes() == b"exe"


def test_a_server_build_plans_the_server_and_stands_in_for_the_missing_ui(tmp_path: Path) -> None:
    plan = buildmake.plan_build("cpu", source=None, builds_dir=tmp_path, bench=False,
                                server=True)
    assert "-DLLAMA_BUILD_SERVER=ON" in plan.cmake_args
    assert "-DLLAMA_BUILD_SERVER=OFF" not in plan.cmake_args
    assert plan.commands[-1][plan.commands[-1].index("--target") + 1:][:2] == [
        "llama", "llama-server"]
    assert "llama-bench" not in plan.commands[-1]
    src = tmp_path / "llama.cpp"
    assert buildmake.ui_standin(src) is True
    assert "add_custom_target(llama-ui-assets)" in (src / "tools/ui/CMakeLists.txt").read_text()
    assert "llama_ui_get_assets" in (src / "tools/ui/ui.h").read_text()
    assert buildmake.ui_standin(src) is False  # a source with its own UI keeps it


# --- discovering and resolving builds -----------------------------------------------------


def test_discover_reads_records_and_reports_broken_ones(tmp_path: Path) -> None:
    write_record(tmp_path, "force-mmq", variant="force-mmq", cuda_arch="90")
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / "build.json").write_text("{not json")
    (tmp_path / "typo").mkdir()
    (tmp_path / "typo" / "build.json").write_text('{"varient": "cpu"}')
    (tmp_path / ".cpu.partial").mkdir()  # a build in progress is never listed
    (tmp_path / ".cpu.partial" / "build.json").write_text('{"variant": "cpu"}')
    reports: list[str] = []
    found = discover_builds(tmp_path, report=reports.append)
    assert [b.name for b in found] == ["installed", "force-mmq"]
    assert found[0].lib_dir == str(installed_lib()) and found[0].variant is None
    mmq = found[1]
    assert (mmq.variant, mmq.cuda_arch, mmq.lib_dir) == ("force-mmq", "90",
                                                         str(tmp_path / "force-mmq" / "lib"))
    assert mmq.created == "2025-01-01T00:05:00+00:00" and mmq.bench_bin is None
    assert len(reports) == 2
    assert "garbled" in reports[0] and "typo" in reports[1]


def test_resolve_build_finds_a_usable_build(tmp_path: Path) -> None:
    # the installed CPU library stands in for a built one (CI cannot compile CUDA)
    write_record(tmp_path, "stand-in", lib=str(installed_lib()))
    build = resolve_build("stand-in", tmp_path)
    assert build.lib_dir == str(installed_lib()) and build.variant == "cpu"
    assert resolve_build("installed", tmp_path).name == "installed"


def test_resolve_build_errors(tmp_path: Path) -> None:
    write_record(tmp_path, "stand-in", lib=str(installed_lib()))
    write_record(tmp_path, "stale", version="0.3.1", lib=str(installed_lib()))
    write_record(tmp_path, "empty", variant="default")
    with pytest.raises(BadInput) as err:
        resolve_build("force-cublas", tmp_path)
    assert "available: installed, empty, stale, stand-in" in err.value.message
    assert err.value.hint == "tuner build --variant force-cublas"
    with pytest.raises(EnvironmentUnfit, match="is llama-cpp-python 0.3.1, installed is"):
        resolve_build("stale", tmp_path)
    with pytest.raises(EnvironmentUnfit, match="no libllama.so") as err2:
        resolve_build("empty", tmp_path)
    assert err2.value.hint == "rebuild it: tuner build --variant default"


# --- probing real libraries (in a subprocess) ---------------------------------------------


def test_probe_library_reads_the_installed_cpu_library() -> None:
    text = probe_library(installed_lib())
    assert "CPU :" in text
    flags = parse_system_info(text)
    assert variant_of(flags) == "cpu" and not flags.cuda


def test_probe_library_refuses_what_cannot_load(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentUnfit, match="no libllama.so"):
        probe_library(tmp_path)
    (tmp_path / "libllama.so").write_bytes(b"not an ELF file")
    with pytest.raises(EnvironmentUnfit, match="cannot load the llama.cpp library") as err:
        probe_library(tmp_path)
    assert "\n" not in err.value.message


def test_list_builds_probes_each_library(tmp_path: Path) -> None:
    write_record(tmp_path, "stand-in", lib=str(installed_lib()))
    write_record(tmp_path, "empty", variant="force-mmq")
    rows = {r["name"]: r for r in list_builds(tmp_path)}
    assert set(rows) == {"installed", "stand-in", "empty"}
    for name in ("installed", "stand-in"):
        assert rows[name]["reported_variant"] == "cpu" and rows[name]["error"] is None
        assert rows[name]["flags"]["cuda"] is False and rows[name]["matches_installed"]
    assert rows["empty"]["reported_variant"] is None
    assert "no libllama.so" in rows["empty"]["error"]


def test_summarize_names_the_kernel_choice_of_real_cuda_builds() -> None:
    fixtures = Path(__file__).parent / "fixtures"
    cublas = parse_system_info((fixtures / "cuda-sysinfo-force-cublas.txt").read_text())
    default = parse_system_info((fixtures / "cuda-sysinfo-default.txt").read_text())
    pairs = "q4_0-q4_0,q8_0-q8_0,f16-f16,bf16-bf16"
    assert builds.summarize(cublas) == f"force-cublas, archs 900, graphs, fa {pairs}"
    assert builds.summarize(default) == f"default, archs 900, graphs, fa {pairs}"
