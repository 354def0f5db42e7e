"""Every report format from loaded studies, through one interface: ``report`` and
``compare_report`` pick the exporter (``tuner.reports.exporters``) and nothing else; the CLI
prints or writes what it returns (a terminal format, on a terminal: ``renderable``)."""

from __future__ import annotations

from rich.console import RenderableType

from tuner.reports.compare import Comparison, compare
from tuner.reports.exporters import FORMATS, NO_PEAKS, TERMINAL, Peaks, exporter
from tuner.reports.studydata import StudyData
from tuner.reports.views import WIDTH

__all__ = ["FORMATS", "TERMINAL", "Peaks", "compare_report", "comparison", "renderable", "report"]


def renderable(studies: list[StudyData], fmt: str, peaks: Peaks = NO_PEAKS) -> RenderableType:
    """The terminal view (a format in ``TERMINAL``) of every study, one after the other."""
    return TERMINAL[fmt].view(studies, peaks)


def report(studies: list[StudyData], fmt: str, peaks: Peaks = NO_PEAKS,
           width: int = WIDTH) -> str:
    """The report of ``studies`` in format ``fmt`` as text (``tuner.reports.exporters``)."""
    return exporter(fmt).studies(studies, peaks, width)


def comparison(a: StudyData, b: StudyData) -> Comparison:
    return compare((a.name, str(a.source), a.records, a.finalists, a.drifts),
                   (b.name, str(b.source), b.records, b.finalists, b.drifts))


def compare_report(a: StudyData, b: StudyData, fmt: str, width: int = WIDTH) -> str:
    """Two studies side by side in format ``fmt`` (``trials`` shows the same as ``table``)."""
    return exporter(fmt).compare(comparison(a, b), width)
