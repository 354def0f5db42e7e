"""The sweep's served phase, second target: the winner (at the server threads chosen for
llama_cpp.server) served by llama-server when one is built for its library, timed over the same
HTTP workload, its placement proven from its own log, its deployment written beside the YAML;
both services then compared side by side (tuner/deploy/servicecompare.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tuner.builds.catalog import _installed_lib_dir
from tuner.deploy.llamaserver import (
    LlamaServerDeployment,
    find_server,
    greedy_prompt,
    process_env,
    serve_and_measure,
    server_args,
    server_env,
    write_deployment,
)
from tuner.deploy.llamaserverknobs import Knob, Tried, failed, judge, supported
from tuner.deploy.prodconfig import raw_figures, record_threads
from tuner.deploy.service import rebuild_command, service_env
from tuner.deploy.servicecompare import lines, raw_of, rows
from tuner.errors import TunerError
from tuner.machine.cpuload import OtherLoad
from tuner.results.records import FinalistReport, ServedFigures, TrialRecord

HOW_TO_BUILD = "tuner build --variant cpu --server-only"


def serve_winner(report: FinalistReport, winner: TrialRecord, served: ServedFigures | None,
                 threads: int | None, *, model_path: str, lib_dir: str | None,
                 builds_dir: Path, out: Path, requests: int, timeout_s: float,
                 note: Callable[[str], None], knobs: bool = True,
                 machine_load: Callable[[], OtherLoad | None] = lambda: None) -> FinalistReport:
    """The report with the winner's llama-server figures (or why there are none) in
    ``llama_server``; the deployment files written beside ``out`` when it was served.
    ``knobs``: also try the server's own settings (tuner/deploy/llamaserverknobs.py);
    ``machine_load``: other processes' share of the CPUs so far, kept in the deployment."""
    lib = lib_dir or str(_installed_lib_dir() or "")
    binary = find_server(lib, builds_dir) if lib else None
    if binary is None:
        why = f"no llama-server built in {builds_dir} ({HOW_TO_BUILD})"
        note(f"llama-server: not served: {why}")
        return report.model_copy(update={"llama_server": {"error": why}})
    threads = threads or record_threads(winner)
    note(f"serving the winner through llama-server ({binary}, {requests} requests, "
         f"threads {threads})")
    try:
        tries = supported(binary, process_env(server_env(winner.spec, lib, model_path))) if knobs else []
        prompt = greedy_prompt(model_path, service_env(winner.spec, lib, model_path)) if tries else None
        fig, _log, greedy = serve_and_measure(binary, winner.spec, winner.workload, model_path,
                                              lib, threads, requests, timeout_s, greedy=prompt)
        flags, fig, tried = _tune(tries, fig, greedy or "", note, lambda extra: serve_and_measure(
            binary, winner.spec, winner.workload, model_path, lib, threads, requests, timeout_s,
            extra=extra, greedy=prompt))
        env = winner.environment
        written = write_deployment(out, LlamaServerDeployment(
            binary=str(binary), args=server_args(winner.spec, winner.workload, model_path,
                                                 threads, extra=flags),
            env=server_env(winner.spec, lib, model_path), lib_dir=str(Path(lib).absolute()),
            build=winner.spec.model.build,
            rebuild=_rebuild(lib_dir, binary, winner),
            model=str(Path(model_path).absolute()), model_bytes=Path(model_path).stat().st_size,
            spec=winner.spec, workload=winner.workload,
            system_info=env.system_info if env else None,
            raw=raw_figures(winner, report) if winner.measurement else None, served=fig,
            knobs=tried, machine_load=machine_load()))
    except TunerError as e:
        note(f"llama-server: not served: {e.message}")
        return report.model_copy(update={"llama_server": {"error": e.message}})
    note(f"llama-server deployment: {written['args']} (+ .env, .json)")
    for line in lines(rows(served, fig, raw_of(report, winner.number, winner.measurement)),
                      flags):
        note(line)
    return report.model_copy(update={"llama_server": fig.model_dump(mode="json"),
                                     "llama_server_flags": flags})


Serve = Callable[[list[str]], tuple[ServedFigures, str, str | None]]


def _tune(knobs: list[Knob], plain: ServedFigures, plain_greedy: str,
          note: Callable[[str], None],
          serve: Serve) -> tuple[list[str], ServedFigures, list[Tried]]:
    """Each knob tried on top of those kept so far, against the best so far; the flags kept,
    the figures measured with them, and every try."""
    flags: list[str] = []
    best, tried = plain, []
    for knob in knobs:
        try:
            fig, _log, greedy = serve([*flags, *knob.flags])
            t = judge(knob, fig, greedy or "", best, plain_greedy)
        except TunerError as e:
            t = failed(knob, e.message)
        note(f"llama-server {knob.name} ({' '.join(knob.flags)}, {knob.what}): "
             + (f"{t.served.summary()}; " if t.served else "") + t.why)
        tried.append(t)
        if t.kept and t.served:
            flags, best = [*flags, *knob.flags], t.served
    return flags, best, tried


def _rebuild(lib_dir: str | None, binary: Path, winner: TrialRecord) -> str:
    """The commands that make the library and the server again on another host."""
    build = rebuild_command(lib_dir, winner)
    if lib_dir and binary.parent.parent == Path(lib_dir).absolute().parent:
        return f"{build} --server"  # the build's own server
    return f"{build}; {HOW_TO_BUILD}"
