"""The two deploy targets side by side for the winner: llama_cpp.server and llama-server, each
served over HTTP with the same workload and sampling, their time to first token, generation
speed, request time and share of the raw decode loop, and which one to run and what each costs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuner.results.records import FinalistReport, Measurement, ServedFigures

PY, CPP = "llama_cpp.server", "llama-server"
COSTS = {
    PY: "the Python API users may need (Llama objects, custom handlers, one Python process)",
    CPP: "another process to run and update (a C++ binary built by `tuner build --server`); "
         "no Python API",
}


@dataclass(frozen=True)
class ServiceRow:
    service: str
    figures: ServedFigures | None
    error: str | None  # why it has no figures
    ttft_share: float | None  # raw prompt time / served time to first token
    gen_share: float | None  # served generation / raw generation

    def cells(self) -> list[str]:
        """service, ttft s, gen t/s, request s, share of raw (ttft, gen)."""
        f = self.figures
        if f is None:
            return [self.service, f"not served: {self.error or 'no figures'}", "", "", ""]
        share = ", ".join(x for x in (
            f"ttft {self.ttft_share:.0%}" if self.ttft_share else "",
            f"gen {self.gen_share:.0%}" if self.gen_share else "") if x)
        return [self.service, f"{f.ttft_s.median:.3f}",
                f"{f.gen_tps.median:.1f}" if f.gen_tps else "", f"{f.request_s.median:.3f}",
                share]


HEADERS = ["service", "ttft s", "gen t/s", "request s", "share of raw"]


def _figures(data: dict[str, Any] | ServedFigures | None) -> tuple[ServedFigures | None,
                                                                     str | None]:
    if data is None or isinstance(data, ServedFigures):
        return data, None
    if "error" in data:
        return None, str(data["error"])
    return ServedFigures.model_validate(data), None


@dataclass(frozen=True)
class Raw:
    """The raw decode loop's speeds the shares are of, and where they come from."""

    pp_tps: float | None
    tg_tps: float | None
    source: str


def raw_of(report: FinalistReport | None, trial: int,
           measurement: Measurement | None = None) -> Raw | None:
    """The winner's raw speeds: its finalist medians when re-measured, else its trial's."""
    fin = next((f for f in report.finalists if f.trial == trial), None) if report else None
    if fin is not None:
        return Raw(fin.pp_tps.value, fin.tg_tps.value if fin.tg_tps else None,
                   "the finalists' re-measured medians")
    if measurement is not None:
        return Raw(measurement.pp_tps.median,
                   measurement.tg_tps.median if measurement.tg_tps else None,
                   "the search trial's medians")
    return None


def rows(py: dict[str, Any] | ServedFigures | None, cpp: dict[str, Any] | ServedFigures | None,
         raw: Raw | None) -> list[ServiceRow]:
    """One row per service (llama_cpp.server first), with its share of the raw figures: the
    raw prompt time over the served time to first token, served generation over raw."""
    out = []
    for name, data in ((PY, py), (CPP, cpp)):
        fig, error = _figures(data)
        ttft_share = gen_share = None
        if fig is not None and raw is not None:
            raw_ttft = fig.prompt_tokens / raw.pp_tps if raw.pp_tps else None
            ttft_share = raw_ttft / fig.ttft_s.median if raw_ttft and fig.ttft_s.median else None
            if fig.gen_tps is not None and raw.tg_tps:
                gen_share = fig.gen_tps.median / raw.tg_tps
        out.append(ServiceRow(name, fig, error, ttft_share, gen_share))
    return out


def recommendation(table: list[ServiceRow]) -> str | None:
    """Which service answers the workload's requests faster (median request time), and what
    each costs; None unless both were served. Where the two services' request times overlap
    (the faster one's slowest request at or above the other's fastest), the medians' order is
    within their spread and the line says so: the costs decide then."""
    served = [r for r in table if r.figures is not None]
    if len(served) < 2:
        return None
    fast, slow = sorted(served, key=lambda r: r.figures.request_s.median)  # type: ignore[union-attr]
    assert fast.figures is not None and slow.figures is not None
    fr, sr = fast.figures.request_s, slow.figures.request_s
    a, b = fr.median, sr.median
    spread = ""
    if fr.max >= sr.min:
        spread = (f"; within their spread (requests {fr.min:.3f}-{fr.max:.3f} s against "
                  f"{sr.min:.3f}-{sr.max:.3f} s overlap): either serves as fast, so what each "
                  "costs decides")
    return (f"recommended: {fast.service} ({a:.3f} s per request against {b:.3f} s, "
            f"{(1 - a / b):.0%} less{spread}); {fast.service} costs {COSTS[fast.service]}; "
            f"{slow.service} costs {COSTS[slow.service]}")


def flags_line(flags: list[str]) -> str | None:
    """What llama-server runs with beyond the trial's settings, or None."""
    if not flags:
        return None
    return (f"{CPP} runs with {' '.join(flags)}: kept by the served phase, faster with the "
            "same greedy answer (tuner/deploy/llamaserverknobs.py)")


def lines(table: list[ServiceRow], flags: list[str] | None = None) -> list[str]:
    """Plain-text lines for the sweep's output and the terminal report; ``flags``: the
    llama-server settings the served phase kept."""
    out = []
    for r in table:
        c = r.cells()
        if r.figures is None:
            out.append(f"{c[0]}: {c[1]}")
        else:
            out.append(f"{c[0]}: ttft {c[1]} s, gen {c[2]} t/s, request {c[3]} s"
                       + (f" ({c[4]} of raw)" if c[4] else ""))
    rec = recommendation(table)
    said = flags_line(flags or [])
    return out + ([said] if said else []) + ([rec] if rec else [])
