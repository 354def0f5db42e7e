"""Can a file be written where the user asked: checked before any work, with nothing heavier
than the standard library imported, so that a bad output path fails in a fraction of a second."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from tuner.errors import BadInput, EnvironmentUnfit
from tuner.machine.output import target_of


def _existing_ancestor(path: Path) -> Path:
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path("/")


def check_writable_folder(path: Path, what: str) -> None:
    """``path``'s folder (or the nearest one that exists, where the rest would be made) must
    take a new file: tried for real, with a temporary file removed at once."""
    folder = _existing_ancestor(Path(path))
    if not folder.is_dir():
        raise BadInput(f"cannot write {what} {path}: {folder} is not a directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tuner-write-check-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise EnvironmentUnfit(f"cannot write {what} {path}: the disk is full",
                                   hint="free space, then run the same command") from None
        raise BadInput(f"cannot write {what} {path}: {folder} is not writable "
                       f"({e.strerror or e})") from None


def check_output_path(path: Path) -> None:
    """An export file (``tuner report -o FILE``): not a folder, in a folder that exists and can
    be written."""
    p = Path(path)
    if p.is_dir():
        raise BadInput(f"cannot write the report to {p}: it is a directory",
                       "give a file name, e.g. -o report.html")
    p = target_of(p, "the report")  # a device, FIFO or socket refused; a link's target checked
    parent = p.absolute().parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise BadInput(f"cannot write the report to {p}: folder {parent} {what}",
                       "create the folder first or pick another path")
    check_writable_folder(p, "the report to")
