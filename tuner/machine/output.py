"""The one way the tuner writes a file a user sees (a report or export ``-o``, the production
config with its sidecar, environment file and ``.bak``): whole or not at all.

- A regular file is replaced atomically: a temporary file in the same folder, written, fsynced,
  renamed over the target (an existing file's permissions kept), the folder fsynced.
- A symbolic link is followed, as editors do: its final target is replaced, the link stays, and
  a note on stderr says which file was written. A link that points nowhere yet creates its
  target.
- A device (``/dev/full``, ``/dev/null``...), a FIFO, a socket or a folder is refused, bad input
  (exit 2), by ``target_of`` before any work (the commands check their outputs when they start)
  and again when writing."""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from contextlib import suppress
from pathlib import Path

from tuner.errors import BadInput

KINDS = {stat.S_IFDIR: "directory", stat.S_IFCHR: "character device",
         stat.S_IFBLK: "block device", stat.S_IFIFO: "FIFO (named pipe)",
         stat.S_IFSOCK: "socket"}
NEW_FILE_MODE = 0o644


def target_of(path: Path, what: str) -> Path:
    """The file a write to ``path`` replaces: ``path``, or the final target of a symbolic link;
    bad input when that is not a regular file (or not there yet)."""
    p = Path(path)
    real = p
    if p.is_symlink():
        try:
            real = Path(os.path.realpath(p, strict=False))
        except (OSError, RuntimeError) as e:  # a loop of links
            raise BadInput(f"cannot write {what} {p}: the symbolic link cannot be followed "
                           f"({e})") from None
    try:
        st = os.stat(real)
    except (FileNotFoundError, NotADirectoryError):  # a new file (its folder is checked apart)
        return real
    except OSError as e:
        raise BadInput(f"cannot write {what} {p}: {e.strerror or e}") from None
    if stat.S_ISREG(st.st_mode):
        return real
    kind = KINDS.get(stat.S_IFMT(st.st_mode), "special file")
    via = f" (the target of the link {p})" if real != p else ""
    raise BadInput(f"cannot write {what} to {real}{via}: it is a {kind}, and the tuner writes "
                   "only regular files", hint="give the path of a regular file")


def write_file(path: Path, data: bytes, what: str) -> Path:
    """Replace ``path`` (or its link's target) with ``data`` atomically; the file written."""
    return replace_files([(Path(path), data)], what, backup=False)[0][0]


def replace_files(files: list[tuple[Path, bytes]], what: str, *,
                  backup: bool) -> list[tuple[Path, Path | None]]:
    """Write each ``(path, data)`` by rename, in order, once every temporary file is whole;
    with ``backup`` an existing target is first kept as ``target.bak`` (itself replaced by
    rename). All files or none: a failure puts back the ones already replaced. Returns each
    written file (a link's target) with its backup, or None where there was none to keep."""
    targets = [(target_of(p, what), p, data) for p, data in files]
    temps: list[str] = []
    backups: dict[Path, Path | None] = {}
    done: list[Path] = []
    try:
        for real, _, data in targets:
            temps.append(_write_temp(real, data))
        backups = {real: _backup(real, what) if backup and real.exists() else None
                   for real, _, _ in targets}
        for (real, _, _), tmp in zip(targets, temps):
            os.replace(tmp, real)
            done.append(real)
    except BaseException:
        for tmp in temps:
            with suppress(OSError):
                os.unlink(tmp)
        for real in done:  # put back what was already replaced: all files or none
            _restore(real, backups.get(real))
        raise
    for folder in dict.fromkeys(real.parent for real, _, _ in targets):
        _fsync_dir(folder)
    for real, given, _ in targets:
        if real != given:
            print(f"note: {given} is a symbolic link: wrote its target {real}",
                  file=sys.stderr, flush=True)
    return [(real, backups.get(real)) for real, _, _ in targets]


def _write_temp(target: Path, data: bytes) -> str:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        mode = NEW_FILE_MODE
        with suppress(OSError):
            mode = stat.S_IMODE(os.stat(target).st_mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _backup(target: Path, what: str) -> Path:
    """Keep ``target`` as ``target.bak``: a hard link renamed into place (a copy where links are
    not supported), so the backup is always whole."""
    bak = target_of(target.with_name(target.name + ".bak"), what)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{bak.name}.", suffix=".tmp")
    os.close(fd)
    os.unlink(tmp)
    try:
        try:
            os.link(target, tmp)
        except OSError:
            tmp = _write_temp(bak, target.read_bytes())
        os.replace(tmp, bak)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    return bak


def _restore(target: Path, backup: Path | None) -> None:
    """Best effort: bring back ``target`` as it was before this write (absent if it was)."""
    with suppress(OSError):
        if backup is None:
            os.unlink(target)
            return
        tmp = _write_temp(target, backup.read_bytes())
        try:
            os.replace(tmp, target)
        except OSError:
            os.unlink(tmp)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
