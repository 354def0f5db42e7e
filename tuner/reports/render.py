"""Terminal rendering for the CLI: the sweep's progress bar, its closing summary, reports and
build listings. No decisions here: everything shown comes from the library's results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tuner.errors import BadInput
from tuner.results.records import TrialRecord
from tuner.specs import TrialSpec


def _fmt_best(best: TrialRecord | None) -> str:
    if best is None or best.measurement is None:
        return "best: none verified yet"
    m = best.measurement
    tg = f", tg {m.tg_tps.median:,.1f} t/s" if m.tg_tps else ""
    return (f"best #{best.number}: {best.objective:.3f} s/request "
            f"(pp {m.pp_tps.median:,.0f} t/s{tg}) {best.spec.label()}")


class SweepProgress:
    """A rich progress bar: trials done of those queued, the trial running, the best so far."""

    def __init__(self, out: Path) -> None:
        self.console = Console(stderr=True)
        # Piped (a log, CI): no bar, whose last state a non-terminal cuts to its width; the
        # lines printed below are whole either way.
        self.progress = Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[now]}"),
                                 console=self.console, transient=False,
                                 disable=not self.console.is_terminal)
        self.task: Any = None
        self.best_line = "best: none verified yet"

    def __enter__(self) -> SweepProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def planned(self, total: int, pending: int, retried: int) -> None:
        note = f" ({retried} interrupted trial(s) retried)" if retried else ""
        self.console.print(f"{total} settings in the grid, {pending} to run{note}", soft_wrap=True)
        if self.task is None:
            self.task = self.progress.add_task("sweep", total=max(pending, 1), now="")
        else:  # the plan grew (a build made during the search): the same bar, a new total
            done = self.progress.tasks[0].completed
            self.progress.update(self.task, total=max(done + pending, 1))

    def note(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def started(self, spec: TrialSpec) -> None:
        self.progress.update(self.task, now=f"running {spec.label()} | {self.best_line}")

    def finished(self, record: TrialRecord, best: TrialRecord | None) -> None:
        self.best_line = _fmt_best(best)
        mark = "ok" if record.usable else (
            "unverified" if record.state.value == "complete" else record.state.value)
        detail = ""
        if record.measurement is not None:
            m = record.measurement
            detail = f"{record.objective:.3f} s, pp {m.pp_tps.median:,.0f} t/s"
            if m.tg_tps:
                detail += f", tg {m.tg_tps.median:,.1f} t/s"
            if m.unstable:
                detail += " (unstable)"
            if record.alongside_build:
                detail += f" (beside the {', '.join(record.alongside_build)} compile)"
        if not record.usable:
            why = record.verification.reasons[0] if record.verification.reasons else record.error
            detail = f"{detail} - {why}" if detail else str(why)
        self.progress.console.print(f"  #{record.number:<4} {mark:<10} {record.spec.label()}: "
                                    f"{detail}", markup=False, highlight=False, soft_wrap=True)
        self.progress.update(self.task, advance=1, now=self.best_line)


def print_sweep_result(out: Path, result: Any) -> None:
    c = Console(highlight=False, soft_wrap=True)
    pruned = sum(r.state.value == "pruned" for r in result.ran)
    c.print(f"study {result.study}: {len(result.ran)} trial(s) run now"
            + (f" ({pruned} pruned)" if pruned else "")
            + f", {len(result.records)} stored in {result.storage}", markup=False)
    if getattr(result, "stop_reason", ""):
        times = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
        c.print(f"search ({result.sampler}): {result.stop_reason}; saw {result.seen} of "
                f"{result.planned} settings" + (f"; time: {times}" if times else ""),
                markup=False)
    beside = sum(bool(r.alongside_build) for r in result.ran)
    if beside:
        c.print(f"{beside} trial(s) measured while a kernel build compiled at idle priority: "
                "their figures only nominated; the confirmation and finalists ran after it",
                markup=False)
    others = getattr(result, "others", None)
    if others is not None and others.noted:
        c.print(others.line(), markup=False)
    if result.written is None:
        what = "production config" if getattr(result, "deferred", False) else \
            "no production config written"
        c.print(f"{what}: {result.no_config_reason}", markup=False)
        for cause in getattr(result, "causes", []):
            for line in cause.lines():
                c.print(line, markup=False)
        return
    c.print(_fmt_best(result.best), markup=False)
    if result.finalists is not None:
        f = result.finalists
        win = next(x for x in f.finalists if x.trial == f.winner_trial)
        ci = win.request_seconds
        c.print(f"finalists re-measured in fresh workers: #{f.winner_trial} "
                f"{ci.value:.4f} s/request ({f.level:.0%} interval {ci.low:.4f}-{ci.high:.4f}, "
                f"{win.rounds} rounds); {f.reason}", markup=False)
        if f.confirmed:
            top = ", ".join(f"#{x.trial} {x.request_seconds.median:.4f} s" for x in f.confirmed[:3])
            c.print(f"confirmed: the search's best {len(f.confirmed)} measured in "
                    f"{max(x.processes for x in f.confirmed)} processes each; finalists "
                    f"chosen on the medians ({top}{', ...' if len(f.confirmed) > 3 else ''})",
                    markup=False)
    drifted = [d for d in result.drifts if d.significant]
    if result.drifts:
        c.print(f"drift sentinel: {len(result.drifts)} worker(s) checked, {len(drifted)} drifted "
                "beyond their noise" + (" (their trials are flagged unstable in the report)"
                                        if drifted else ""), markup=False)
    if result.front:
        from tuner.search.pareto import describe

        c.print(f"Pareto front ({len(result.front)} trials, none beaten on every axis by "
                f"another): {describe(result.front)}", markup=False)
    c.print(f"verified: {result.best.verification.summary}", markup=False)
    c.print(f"wrote {result.written.path} (details: {result.written.sidecar})", markup=False)
    if result.written.backup:
        c.print(f"previous config kept as {result.written.backup}", markup=False)


def print_report(console: Console, storage: str, study: str | None, fmt: str,
                 output: Path | None, compare: tuple[str, str] | None = None,
                 peaks: Any = None) -> None:
    """Show (or write to ``output``) the report the library renders: the terminal views keep
    their colours on a terminal and are laid out at most 100 columns wide."""
    from tuner.reports.reporting import TERMINAL, Peaks, compare_report, renderable, report
    from tuner.reports.studydata import resolve_study, studies_to_show, write_output
    from tuner.reports.views import WIDTH

    if compare and study:
        raise BadInput("give either --study or --compare A B, not both")
    peaks = peaks or Peaks()
    if compare:
        a, b = (resolve_study(x, storage) for x in compare)
        text = compare_report(a, b, fmt)
    else:
        studies = studies_to_show(storage, study)
        if output is None and fmt in TERMINAL:
            console.print(renderable(studies, fmt, peaks), width=min(console.width, WIDTH))
            return
        text = report(studies, fmt, peaks)
    if output is None:
        console.print(text, markup=False, highlight=False, soft_wrap=True, end="")
    else:
        write_output(output, text)
        console.print(f"wrote {output}", markup=False)


def print_builds(console: Console, builds_dir: Path) -> None:
    from rich.table import Table

    from tuner.builds.catalog import list_builds

    table = Table(title=f"kernel builds ({builds_dir})")
    for col in ("name", "variant", "library reports", "lib_dir"):
        table.add_column(col, overflow="fold")
    for b in list_builds(builds_dir):
        reports = b.get("error") or b.get("flags_summary") or ""
        if b.get("reported_variant") and b.get("variant") and b["reported_variant"] != b["variant"]:
            reports = f"MISMATCH: library is {b['reported_variant']}; {reports}"
        table.add_row(str(b.get("name")), str(b.get("variant") or "(installed)"), reports,
                      str(b.get("lib_dir")))
    console.print(table)


def run_build(console: Console, variant: str, source: Path | None, cuda_arch: str | None,
              builds_dir: Path, jobs: int | None, dry_run: bool, *, bench: bool = True,
              server: bool = False, if_missing: bool = False) -> None:
    from tuner.builds.buildmake import build_variant, existing_build

    def log(line: str) -> None:
        console.print(line, markup=False, highlight=False)

    if if_missing and not dry_run:
        have = existing_build(variant, builds_dir, bench=bench, server=server)
        if have is not None:
            console.print(f"already built {have.name}: {have.lib_dir}"
                          + (f", {have.server_bin}" if have.server_bin else ""), markup=False)
            return
    if dry_run:
        plan = build_variant(variant, source=source, builds_dir=builds_dir, cuda_arch=cuda_arch,
                             jobs=jobs, dry_run=True, log=log, bench=bench, server=server)
        for line in plan.shell_lines():
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    else:
        info = build_variant(variant, source=source, builds_dir=builds_dir, cuda_arch=cuda_arch,
                             jobs=jobs, dry_run=False, log=log, bench=bench, server=server)
        console.print(f"built {info.name}: {info.lib_dir}"
                      + (f", {info.server_bin}" if info.server_bin else ""), markup=False)
