"""The kernel builds a sweep measures: each one's library loaded once in a worker (its hello
and compile flags), those that cannot drive the device left out, the redundant ones said and
left out, and the missing ones this GPU could use compiled in the background
(tuner/builds/autobuild.py) while the search measures the builds there are."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from tuner.builds import catalog as builds_mod
from tuner.builds.autobuild import BackgroundBuilds, Builder
from tuner.builds.buildinfo import BuildFlags, parse_system_info
from tuner.builds.cpuflags import CUDA_INSTALL_HINT, has_amx
from tuner.builds.selection import MissingBuild, missing_builds, redundant_builds
from tuner.errors import EnvironmentUnfit
from tuner.specs import Device, ModelSettings
from tuner.sweep.options import Events
from tuner.worker.protocol import Hello
from tuner.worker.runner import Runner


@dataclass
class BuildProbe:
    name: str
    lib_dir: str | None
    expected_variant: str | None
    hello: Hello
    flags: BuildFlags


def build_names(space_builds: list[str] | None, device: Device, builds_dir: Path) -> list[str]:
    """The builds to probe: a space file's, else the installed one on the CPU, else every
    build made."""
    if space_builds is not None:
        return space_builds
    if device == "cpu":
        return ["installed"]
    return [b.name for b in builds_mod.discover_builds(builds_dir)]


def probe_builds(runner: Runner, names: list[str], device: Device, explicit: bool,
                 builds_dir: Path) -> list[BuildProbe]:
    found: list[BuildProbe] = []
    for name in names:
        info = builds_mod.resolve_build(name, builds_dir)
        runner.lib_dirs[name] = None if name == "installed" else str(Path(info.lib_dir).absolute())
        try:
            hello = runner.probe_hello(ModelSettings(build=name, device=device), keep=True)
        except RuntimeError as e:
            raise EnvironmentUnfit(f"build {name!r} cannot be loaded: {e}") from None
        flags = parse_system_info(hello.system_info or "")
        expected = None if name == "installed" else info.variant
        probe = BuildProbe(name, runner.lib_dirs[name], expected, hello, flags)
        if device == "cuda" and not hello.supports_gpu_offload:
            if explicit:
                raise EnvironmentUnfit(no_cuda_message(name, flags), hint=CUDA_INSTALL_HINT)
            continue
        found.append(probe)
    if not found:
        raise EnvironmentUnfit(no_cuda_message(names[0], None), hint=CUDA_INSTALL_HINT)
    return found


def builds_to_make(probes: dict[str, BuildProbe]) -> list[MissingBuild]:
    """The kernel builds this GPU could use that are not made yet (tuner/builds/selection.py)."""
    return missing_builds({n: (p.flags, p.hello.log) for n, p in probes.items()})


def start_builds(missing: list[MissingBuild], builds_dir: Path, logs: Path, events: Events,
                 builder: Builder | None) -> BackgroundBuilds | None:
    """The missing kernel builds, started in the background (tuner/builds/autobuild.py) by
    ``builder`` (None: tuner's build_variant): the search measures the builds there are
    meanwhile; None when nothing is missing."""
    if not missing:
        return None
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / "build.log"
    lock = threading.Lock()

    def log(line: str) -> None:
        with lock, log_path.open("a") as f:
            f.write(line + "\n")

    events.note(f"building {', '.join(m.variant for m in missing)} for this GPU from the installed "
                "version's source, at idle CPU priority, while the search measures the builds "
                f"there are (its log: {log_path}); figures taken beside the compile only "
                "nominate: the leaders are measured again after it (--no-build sweeps the "
                "builds there are)")
    return BackgroundBuilds(missing, builds_dir, log, builder)


def take_builds(runner: Runner, probes: dict[str, BuildProbe], background: BackgroundBuilds,
                device: Device, builds_dir: Path, events: Events) -> dict[str, BuildProbe]:
    """The probed builds plus those the background compile made (waiting for it to end). A
    build that cannot be made leaves the sweep on the builds it has."""
    done = background.wait()
    for line in done.failed:
        events.note(line)
    if not done.built:
        return probes
    events.note(f"built {', '.join(done.built)} in {done.seconds:.0f} s ({done.jobs} compile "
                f"jobs each, {done.priority} CPU priority); its settings join the search")
    try:
        new = probe_builds(runner, done.built, device, False, builds_dir)
    except EnvironmentUnfit as exc:  # made, but it cannot drive this GPU: the sweep goes on
        events.note(f"{', '.join(done.built)} left out: {exc.message}")
        return probes
    merged = {**probes, **{p.name: p for p in new}}
    return without_redundant_builds(merged, False, events)


def without_redundant_builds(probes: dict[str, BuildProbe], explicit: bool,
                             events: Events, building: bool = False) -> dict[str, BuildProbe]:
    """The builds worth trials on this GPU: one that would run another's kernels
    (builds/selection.py) is left out of a discovered set, said once; a space file that names it
    keeps it, with the same note. ``building``: the missing builds are being made (no note)."""
    evidence = {n: (p.flags, p.hello.log) for n, p in probes.items()}
    same = redundant_builds(evidence)
    if not explicit and not building:
        for m in missing_builds(evidence):
            events.note(f"a kernel build that can change this GPU's kernels is not built: "
                        f"`{m.command}` makes it from the installed version's source (minutes); "
                        "the next sweep then tries it")
    for name, why in same.items():
        events.note(f"build {name}: {why}; " + (
            "kept because the space names it" if explicit else "its trials are left out"))
    return probes if explicit else {n: p for n, p in probes.items() if n not in same}


def amx_notes(probes: dict[str, BuildProbe]) -> list[str]:
    """A CPU sweep's warning for each build compiled with llama.cpp's AMX code path."""
    return [f"build {p.name} was compiled with llama.cpp's AMX code path (AMX_INT8 = 1), which "
            "crashes on this CPU's weights (llama.cpp issue 20824): its trials are likely to "
            "die; scripts/install.sh rebuilds it without (tuner/builds/cpuflags.py)"
            for p in probes.values() if has_amx(p.hello.system_info or "")]


def no_cuda_message(name: str, flags: BuildFlags | None) -> str:
    if flags is not None and flags.cuda:
        return f"build {name!r} has CUDA but found no CUDA device: check the driver and GPU"
    return (f"llama-cpp-python build {name!r} cannot offload to a GPU (a CPU-only build, or no "
            "CUDA device); use --device cpu to tune for the CPU on purpose")
