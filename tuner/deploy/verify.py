"""``tuner verify``, one flow for every kind of deployment (tuner/deploy/deployed.py): start the
real server the way the deployment would (its environment, from another working directory, a
free loopback port), prove from the server's memory map and own log that it loaded the measured
build and placed the model as measured, send the sweep's workload over HTTP, and compare time
to first token and generation speed with the figures stored beside the deployment. ``--url``
checks a service already running (speed only: its log is not ours to read).

Every way the deployment can be wrong is one error line: a missing model, a server that exits
(with its log's last lines), a port in use, another library than the measured build, a
placement that is not the measured one (exit 3), served speed outside the tolerance (exit 3)."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from tuner.builds.buildinfo import BuildFlags, find_system_info, variant_of
from tuner.deploy.deployed import DeployedService, Stored, local_url
from tuner.deploy.httpserve import free_port
from tuner.deploy.service import raw_prediction
from tuner.deploy.sidecar import check_url
from tuner.errors import BadInput, EnvironmentUnfit, TunerError
from tuner.evidence.placement import expect, parse_load_log, verify
from tuner.machine import cpuload
from tuner.machine.tempdirs import temp_dir
from tuner.results.records import ServedFigures
from tuner.specs import Frozen

# Build facts that must match between what was measured and what the server loaded (CPU
# feature flags may differ between hosts without changing the kernels that run on the GPU).
_BUILD_FACTS = ("cuda", "archs", "force_cublas", "force_mmq", "cuda_graphs", "fa_quants",
                "fa_all_quants")


class SpeedCheck(Frozen):
    name: str  # "time to first token" | "generation"
    unit: str
    measured: float
    reference: float
    change: float  # (measured - reference) / reference
    ok: bool


class VerifyResult(Frozen):
    config: str
    url: str
    log_path: str | None = None
    placement: str | None = None  # the summary line; None with --url
    placement_reasons: list[str] = Field(default_factory=list)
    library: str | None = None  # the libllama the server process mapped
    measured: ServedFigures | None = None
    reference_kind: str = "served"  # served | raw
    reference_note: str = ""
    checks: list[SpeedCheck] = Field(default_factory=list)
    gap: str | None = None  # raw (sweep) vs served (now), both numbers
    tolerance: float = 0.10

    @property
    def placement_ok(self) -> bool:
        return not self.placement_reasons

    @property
    def passed(self) -> bool:
        return self.placement_ok and all(c.ok for c in self.checks)


def run_verify(path: Path, load: Callable[[Path], DeployedService], *, url: str | None = None,
               port: int | None = None, tolerance: float = 0.10, requests: int = 5,
               timeout_s: float = 300, log_dir: Path | None = None) -> VerifyResult:
    """Verify the deployment at ``path``, read by ``load`` (its kind's reader); see the module
    docstring."""
    url = check_url(url) if url is not None else None
    svc = load(path)
    st = svc.stored
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(temp_dir("tuner-verify-")))
        log_path: Path | None = None
        facts: dict[str, Any] = {}
        if url is None:
            port = free_port(port)
            log_path = _log_path(st.path, log_dir, tmp)
            pid = svc.start(stack, port, tmp, log_path, timeout_s)
            url = local_url(port)
            facts = _check_server(st, pid, log_path.read_text(errors="replace"))
            if facts["placement_reasons"]:
                return VerifyResult(config=str(st.path), url=url, log_path=str(log_path),
                                    tolerance=tolerance, **facts)
        measured = _measured(svc, url.rstrip("/"), requests, timeout_s)
    kind, note, checks = compare(measured, st.figures, tolerance, st.figures_name)
    return VerifyResult(config=str(st.path), url=url,
                        log_path=str(log_path) if log_path else None, measured=measured,
                        reference_kind=kind, reference_note=note, checks=checks,
                        gap=gap_line(measured, st.figures), tolerance=tolerance, **facts)


def _measured(svc: DeployedService, url: str, requests: int, timeout_s: float) -> ServedFigures:
    """The workload over HTTP. A served-path failure (prompts the vocabulary cannot make, a
    served-path process that dies, a reply the service garbles) says why in one line, exit 3:
    the deployment could not be shown to serve; never an unexpected error (exit 1)."""
    try:
        return svc.measure(url, requests, timeout_s)
    except (BadInput, EnvironmentUnfit):
        raise
    except TunerError as e:
        raise EnvironmentUnfit(f"the served workload could not be measured: {e.message}",
                               hint=e.hint) from None
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        raise EnvironmentUnfit("the served workload could not be measured: "
                               f"{type(e).__name__}: {e}") from None


def _log_path(config: Path, log_dir: Path | None, tmp: Path) -> Path:
    """The server's log beside the config (kept for the user), else in the temp folder."""
    stem = config.name.rsplit(".", 1)[0]
    for folder in (log_dir, config.parent):
        if folder is not None and os.access(folder, os.W_OK):
            return Path(folder) / f"{stem}.verify.log"
    return tmp / f"{stem}.verify.log"


def _check_server(st: Stored, pid: int, log: str) -> dict[str, Any]:
    """Library, build flags and placement of the running server, from the process's memory
    map and its own load log. A build mismatch raises; a placement mismatch is reported."""
    library = loaded_library(pid)
    want_dir = st.build.lib_dir
    if library and want_dir and Path(library).resolve().parent != Path(want_dir).resolve():
        raise EnvironmentUnfit(f"build mismatch: {st.name} loaded {library}, the sweep "
                               f"measured the build in {want_dir}", hint=st.build.lib_hint)
    loaded = find_system_info(log)
    measured = find_system_info(st.build.system_info)
    if loaded is not None and measured is not None and (diff := _build_diff(measured, loaded)):
        raise EnvironmentUnfit(f"build mismatch: {st.name}'s library is {_describe(loaded)}, "
                               f"the sweep measured {_describe(measured)} ({diff})",
                               hint=st.build.rebuild_hint)
    verdict = verify(parse_load_log(log), expect(
        st.spec, st.workload, build=variant_of(measured) if measured else None))
    return {"placement": verdict.summary, "placement_reasons": verdict.reasons,
            "library": library}


def loaded_library(pid: int) -> str | None:
    """The libllama a process has mapped (Linux /proc), or None where that cannot be read."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if os.path.basename(path).startswith("libllama.so"):
            return path
    return None


def _build_diff(a: BuildFlags, b: BuildFlags) -> str:
    return ", ".join(f"{k} {getattr(a, k)!r} vs {getattr(b, k)!r}" for k in _BUILD_FACTS
                     if getattr(a, k) != getattr(b, k))


def _describe(flags: BuildFlags) -> str:
    archs = f" archs {','.join(flags.archs)}" if flags.archs else ""
    return f"{variant_of(flags)}{archs}"


def raw_reference(prompt_tokens: int, side: dict[str, Any]) -> tuple[float | None, float | None]:
    """(time to first token, generation tok/s) the sidecar's RAW figures predict: the prompt at
    the raw prompt speed, generation at the raw decode speed."""
    return raw_prediction(side.get("figures") or {}, prompt_tokens)


def gap_line(measured: ServedFigures, side: dict[str, Any]) -> str | None:
    """"raw vs served: ..." with both numbers, or None without raw figures."""
    ttft, gen = raw_reference(measured.prompt_tokens, side)
    parts = []
    if ttft:
        m = measured.ttft_s.median
        parts.append(f"time to first token raw {ttft:.3f} s vs served {m:.3f} s "
                     f"({(m - ttft) / ttft:+.1%})")
    if gen and measured.gen_tps is not None:
        m = measured.gen_tps.median
        parts.append(f"generation raw {gen:.1f} tok/s vs served {m:.1f} tok/s "
                     f"({(m - gen) / gen:+.1%})")
    return "raw vs served: " + "; ".join(parts) if parts else None


def compare(measured: ServedFigures, side: dict[str, Any], tolerance: float,
            whose: str = "the sidecar's") -> tuple[str, str, list[SpeedCheck]]:
    """Time to first token and generation speed against the sidecar's served figures (``whose``
    names them in the note), or its raw figures when it has none (the raw loop leaves out the
    per-token Python work, so a gap there is expected and said)."""
    served = side.get("served")
    served = served if isinstance(served, dict) else None
    ttft: float | None
    gen: float | None
    if served and "error" not in served:
        try:
            ref = ServedFigures.model_validate({k: v for k, v in served.items() if k != "kind"})
        except ValidationError:
            raise BadInput("the sidecar's served figures are not valid",
                           hint="write the config again with tuner sweep") from None
        kind, note = "served", f"{whose} served figures ({ref.summary()})"
        ttft = ref.ttft_s.median
        gen = ref.gen_tps.median if ref.gen_tps else None
    else:
        kind = "raw"
        why = f" ({served['error']})" if served and served.get("error") else ""
        note = (f"the sidecar has no served figures{why}: compared with its RAW figures (decode "
                "loop, no per-token sampling or streaming), which a service does not reach")
        ttft, gen = raw_reference(measured.prompt_tokens, side)
    load = cpuload.OtherLoad.stored(side)
    if load is not None and load.noted:
        note += (f"; measured while other processes kept {load.share:.0%} of the "
                 f"{load.n_cpu} CPUs busy: slower than this machine gives alone, so a pass "
                 "against them proves less")
    checks = []
    if ttft:
        m = measured.ttft_s.median
        checks.append(SpeedCheck(name="time to first token", unit="s", measured=m,
                                 reference=ttft, change=(m - ttft) / ttft,
                                 ok=m <= ttft * (1 + tolerance)))
    if gen and measured.gen_tps is not None:
        m = measured.gen_tps.median
        checks.append(SpeedCheck(name="generation", unit="tok/s", measured=m, reference=gen,
                                 change=(m - gen) / gen, ok=m >= gen * (1 - tolerance)))
    return kind, note, checks


def result_lines(result: VerifyResult) -> list[str]:
    """What ``tuner verify`` prints."""
    lines = [f"config: {result.config}", f"service: {result.url}"]
    if result.log_path:
        lines.append(f"server log: {result.log_path}")
    if result.library:
        lines.append(f"library: {result.library}")
    if result.placement is not None:
        state = "proven" if result.placement_ok else "NOT as measured"
        lines.append(f"placement: {state}: {result.placement}")
        lines += [f"  - {r}" for r in result.placement_reasons]
    else:
        lines.append("placement: not checked (--url: the service's log is not ours)")
    if result.measured is not None:
        lines.append(f"served now: {result.measured.summary()}")
        lines.append(f"reference: {result.reference_note}")
        for c in result.checks:
            verdict = "ok" if c.ok else f"OUTSIDE {result.tolerance:.0%}"
            fmt = ".3f" if c.unit == "s" else ".1f"
            lines.append(f"{c.name}: {c.measured:{fmt}} {c.unit} vs {c.reference:{fmt}} "
                         f"{c.unit} ({c.change:+.1%}) {verdict}")
        if result.gap:
            lines.append(result.gap)
    return lines


def failure(result: VerifyResult) -> TunerError | None:
    """The one error a failed verification ends with (exit 3), or None when it passed."""
    if not result.placement_ok:
        return EnvironmentUnfit("placement not as measured: " + "; ".join(result.placement_reasons),
                                hint=f"the server's log: {result.log_path}")
    slow = [c for c in result.checks if not c.ok]
    if slow:
        what = "; ".join(f"{c.name} {c.measured:.3g} {c.unit} vs {c.reference:.3g} {c.unit} "
                         f"({c.change:+.1%})" for c in slow)
        return EnvironmentUnfit(f"served speed outside the {result.tolerance:.0%} tolerance "
                                f"of the {result.reference_kind} figures: {what}",
                                hint="other load on the machine, fewer threads or another "
                                     "build than measured; rerun, or roll back (see the "
                                     "sidecar's 'rollback')")
    return None
