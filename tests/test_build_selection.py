"""Only the builds that can change what this GPU runs (tuner/builds/selection.py): a force-mmq
build beside the default one is left out on a GPU with tensor-core MMA, read from what the CUDA
backend printed (the real H200 probe output in tests/fixtures/) and from each library's flags;
kept on an older GPU, on code compiled for an older one, or without evidence. The sweep drops it
from a discovered set and keeps it, with a note, when a space file names it (FAKE probes: no
CUDA device here)."""

from __future__ import annotations

from pathlib import Path

from tuner.builds.buildinfo import parse_system_info
from tuner.builds.selection import (
    compute_capabilities,
    highest_compiled_arch,
    missing_builds,
    redundant_builds,
)
from tuner.sweep.probing import BuildProbe, without_redundant_builds
from tuner.worker.protocol import Hello

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PROBE = (FIXTURES / "cuda-sysinfo-default.txt").read_text()  # device lines + system info
DEFAULT = parse_system_info(PROBE)
MMQ = DEFAULT.model_copy(update={"force_mmq": True})
CUBLAS = DEFAULT.model_copy(update={"force_cublas": True})
PASCAL = PROBE.replace("compute capability 9.0", "compute capability 6.1")


def test_compute_capabilities_and_compiled_archs_are_read_from_the_library() -> None:
    assert compute_capabilities(PROBE) == [900]
    h100 = (FIXTURES / "cuda-h100-full-offload.log").read_text()
    assert compute_capabilities(h100) == [900]
    assert compute_capabilities((FIXTURES / "h200x2-row-split-load.log").read_text()) == [900, 900]
    assert compute_capabilities("no device lines") == []
    assert DEFAULT.archs == ["900"] and highest_compiled_arch(DEFAULT, 900) == 900
    assert highest_compiled_arch(DEFAULT.model_copy(update={"archs": ["61", "70"]}), 900) == 700
    assert highest_compiled_arch(DEFAULT, 610) is None  # nothing compiled runs there


def test_force_mmq_runs_the_default_kernels_on_a_gpu_with_tensor_core_mma() -> None:
    same = redundant_builds({"default": (DEFAULT, PROBE), "force-mmq": (MMQ, PROBE),
                             "force-cublas": (CUBLAS, PROBE)})
    assert list(same) == ["force-mmq"]
    assert "compute capability 9.0" in same["force-mmq"] and "runs the kernels of default" \
        in same["force-mmq"]


def test_force_mmq_is_kept_where_it_can_change_the_kernels() -> None:
    assert redundant_builds({"default": (DEFAULT, PASCAL), "force-mmq": (MMQ, PASCAL)}) == {}
    old_code = MMQ.model_copy(update={"archs": ["61"]})  # compiled for Pascal only
    assert redundant_builds({"default": (DEFAULT, PROBE), "force-mmq": (old_code, PROBE)}) == {}
    assert redundant_builds({"default": (DEFAULT, ""), "force-mmq": (MMQ, "")}) == {}
    assert redundant_builds({"force-cublas": (CUBLAS, PROBE), "force-mmq": (MMQ, PROBE)}) == {}


class Notes:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def note(self, text: str) -> None:
        self.lines.append(text)


def probe(name: str, flags: object) -> BuildProbe:
    """FAKE: what a CUDA probe worker reports, from the real probe output above."""
    hello = Hello(pid=1, system_info=PROBE.splitlines()[-1], supports_gpu_offload=True,
                  llama_cpp_python="0.3.36", lib_dir=None, gpus=[], driver=None, hostname="h",
                  log=PROBE)
    return BuildProbe(name, None, name, hello, flags)  # type: ignore[arg-type]


def test_the_sweep_leaves_the_redundant_build_out_of_a_discovered_set_only() -> None:
    probes = {n: probe(n, f) for n, f in (("default", DEFAULT), ("force-cublas", CUBLAS),
                                           ("force-mmq", MMQ))}
    notes = Notes()
    kept = without_redundant_builds(probes, explicit=False, events=notes)  # type: ignore[arg-type]
    assert list(kept) == ["default", "force-cublas"]
    assert len(notes.lines) == 1 and "its trials are left out" in notes.lines[0]
    notes = Notes()
    named = without_redundant_builds(probes, explicit=True, events=notes)  # type: ignore[arg-type]
    assert list(named) == ["default", "force-cublas", "force-mmq"]
    assert "kept because the space names it" in notes.lines[0]


def test_the_missing_build_is_named_with_the_command_that_makes_it() -> None:
    assert [m.command for m in missing_builds({"default": (DEFAULT, PROBE)})] == [
        "tuner build --variant force-cublas --cuda-arch 90"]
    assert missing_builds({"default": (DEFAULT, PROBE), "force-cublas": (CUBLAS, PROBE)}) == []
    assert [m.command for m in missing_builds({"default": (DEFAULT, PASCAL)})] == [
        "tuner build --variant force-cublas --cuda-arch 61",
        "tuner build --variant force-mmq --cuda-arch 61"]
    cpu = DEFAULT.model_copy(update={"cuda": False})
    assert missing_builds({"installed": (cpu, "")}) == []
    notes = Notes()
    without_redundant_builds({"installed": probe("installed", DEFAULT)}, explicit=False,
                              events=notes)  # type: ignore[arg-type]
    assert notes.lines == ["a kernel build that can change this GPU's kernels is not built: "
                           "`tuner build --variant force-cublas --cuda-arch 90` makes it from the "
                           "installed version's source (minutes); the next sweep then tries it"]
