"""The tuner's temporary folders (``/tmp/tuner-verify-*``, ``tuner-llsrv-*`` ...), and the
removal of those a SIGKILLed tuner left behind.

Each folder made here holds a marker naming the process that made it: its pid, its start time
(field 22 of ``/proc/<pid>/stat``, so that a reused pid is not taken for it), its pid
namespace and the boot. Making a new folder first removes the folders of these prefixes whose
maker is gone: a marker of this boot and pid namespace whose pid is not running, or runs with
another start time, or a marker of an earlier boot. Only a folder of this user with a valid
marker is ever removed: a folder without one (another program's, or one being made this
instant, before its marker is written) or of another pid namespace (whose processes cannot be
seen from here) stays."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

PREFIXES = ("tuner-verify-", "tuner-served-", "tuner-llsrv-", "tuner-probe-", "tuner-doctor-")
MARKER = ".tuner-owner"
_MARKER_MAX = 4096  # a marker is one short JSON line: a larger file is not one


@dataclass(frozen=True)
class Owner:
    """The process a folder belongs to."""

    pid: int
    start: int  # clock ticks after boot (/proc/<pid>/stat field 22)
    pidns: str  # /proc/self/ns/pid's link, "pid:[4026531836]"
    boot: str  # /proc/sys/kernel/random/boot_id


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (the start time), or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[19])  # fields[0] is field 3 (the state)
    except (OSError, ValueError, IndexError):
        return None


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _pidns() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def me() -> Owner | None:
    """This process as an owner; None where /proc does not say (no marker, nothing removed)."""
    start, boot, ns = start_time(os.getpid()), _read("/proc/sys/kernel/random/boot_id"), _pidns()
    if start is None or not boot or not ns:
        return None
    return Owner(pid=os.getpid(), start=start, pidns=ns, boot=boot)


def read_marker(folder: Path) -> Owner | None:
    """The marker of ``folder``, or None when it has no valid one (missing, not a regular
    file of this user, too large, not the marker's JSON)."""
    path = folder / MARKER
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_size > _MARKER_MAX:
            return None
        data = json.loads(os.read(fd, _MARKER_MAX))
        owner = Owner(**data)
    except (OSError, ValueError, TypeError):
        return None
    finally:
        os.close(fd)
    ok = (isinstance(owner.pid, int) and isinstance(owner.start, int) and owner.pid > 0
          and isinstance(owner.pidns, str) and isinstance(owner.boot, str))
    return owner if ok else None


def gone(owner: Owner, now: Owner) -> bool:
    """Whether ``owner`` has surely ended, as seen by the process ``now``."""
    if owner.boot != now.boot:
        return True  # made before a reboot: every process of then has ended
    if owner.pidns != now.pidns:
        return False  # its processes cannot be seen from here
    return start_time(owner.pid) != owner.start


def stale(root: Path, now: Owner) -> list[Path]:
    """The folders of the tuner's prefixes under ``root`` whose maker is gone."""
    try:
        names = [n for n in os.listdir(root) if n.startswith(PREFIXES)]
    except OSError:
        return []
    out = []
    for name in names:
        folder = root / name
        try:
            st = os.lstat(folder)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            continue
        owner = read_marker(folder)
        if owner is not None and gone(owner, now):
            out.append(folder)
    return out


def remove_stale(root: Path | None = None) -> list[Path]:
    """Remove the stale folders under ``root`` (the temporary folder); those removed."""
    now = me()
    if now is None:
        return []
    removed = []
    for folder in stale(Path(root or tempfile.gettempdir()), now):
        shutil.rmtree(folder, ignore_errors=True)  # another tuner may be removing it too
        if not folder.exists():
            removed.append(folder)
    return removed


def temp_dir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A new temporary folder (``prefix`` one of PREFIXES) marked as this process's, made after
    the stale ones are removed. Used as ``tempfile.TemporaryDirectory``."""
    if prefix not in PREFIXES:
        raise ValueError(f"{prefix!r} is not one of the tuner's temporary prefixes")
    with contextlib.suppress(OSError):
        remove_stale()
    tmp = tempfile.TemporaryDirectory(prefix=prefix)
    owner = me()
    if owner is not None:
        with contextlib.suppress(OSError):
            (Path(tmp.name) / MARKER).write_text(json.dumps(asdict(owner)) + "\n")
    return tmp
