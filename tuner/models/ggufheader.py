"""A bounded cursor over a GGUF header: every read is checked against what is left in the
file, so a corrupt count or length becomes a one-line ``BadModel``, never a huge allocation
or a read past the end. Used by ``tuner.models.modelcheck``."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path
from typing import BinaryIO

from tuner.errors import BadModel

CHUNK = 1 << 20
PLAUSIBLE_STRING_BYTES = 1 << 24  # a longer string running past the end is corruption
CORRUPT = "the file is corrupt; download or convert it again"
INCOMPLETE = "the file is incomplete; download or convert it again"
IO_TROUBLE = "check the file and the disk it is on"


def _show(path: Path) -> str:
    text = str(path)
    return text if text.isprintable() else ascii(text)


def _q(name: str) -> str:
    """A key or tensor name for a message: quoted, escaped, and short even if corrupt."""
    return ascii(name if len(name) <= 64 else name[:64] + "...")


def _fail(path: Path, problem: str, hint: str = CORRUPT) -> BadModel:
    return BadModel(f"{_show(path)}: {problem}", hint)


class _Header:
    """A cursor over the header that refuses to step past the end of the file."""

    def __init__(self, f: BinaryIO, path: Path, size: int) -> None:
        self.f, self.path, self.size, self.pos = f, path, size, 0

    def remaining(self) -> int:
        return self.size - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.remaining():
            raise _fail(self.path, f"truncated header: the file ends at byte {self.size} while "
                        f"reading {what} at byte {self.pos}", INCOMPLETE)
        data = self.f.read(n)
        if len(data) != n:
            raise _fail(self.path, f"could not read {what} at byte {self.pos}", IO_TROUBLE)
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        if n > self.remaining():
            self.take(n, what)  # raises the truncation error without reading
        self.f.seek(n, os.SEEK_CUR)
        self.pos += n

    def too_long(self, n: int, what: str) -> BadModel:
        """A string that runs past the end of the file: a plausible length means the file was
        cut short, an absurd one that the header is corrupt."""
        if n <= PLAUSIBLE_STRING_BYTES:
            return _fail(self.path, f"truncated header: the file ends at byte {self.size}, inside "
                         f"{what}", INCOMPLETE)
        return _fail(self.path, f"absurd string length: {what} claims {n} bytes, more than the "
                     f"{self.remaining()} bytes left in the file")

    def skip_strings(self, count: int, key: str) -> None:
        """Step over an array of strings, reading big chunks: vocabularies hold 10**5 of them."""
        pos, start, buf = self.pos, self.pos, b""  # buf holds the file's bytes from start on
        length_at = struct.Struct("<Q").unpack_from
        for j in range(count):
            if pos + 8 > start + len(buf):
                self.f.seek(pos)
                start, buf = pos, self.f.read(CHUNK)
                if len(buf) < 8:
                    self.pos = pos
                    self.take(8, f"the length of element {j} of {_q(key)}")  # raises
            n = length_at(buf, pos - start)[0]
            pos += 8
            if n > self.size - pos:
                self.pos = pos
                raise self.too_long(n, f"element {j} of {_q(key)}")
            pos += n
        self.pos = pos
        self.f.seek(pos)

    def unpack(self, fmt: str, what: str) -> int | float | bool:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def u32(self, what: str) -> int:
        return int(self.unpack("<I", what))

    def u64(self, what: str) -> int:
        return int(self.unpack("<Q", what))

    def string(self, what: str, limit: int, keep_max: int | None = None) -> str | None:
        """Read a length-prefixed string of at most ``limit`` bytes; one longer than
        ``keep_max`` is stepped over and comes back as None."""
        n = self.u64(f"the length of {what}")
        if n > self.remaining():
            raise self.too_long(n, what)
        if n > limit:
            raise _fail(self.path, f"absurd string length: {what} claims {n} bytes "
                        f"(at most {limit} expected)")
        if keep_max is not None and n > keep_max:
            self.skip(n, what)
            return None
        return self.take(n, what).decode("utf-8", errors="replace")


def _open(path: Path) -> tuple[BinaryIO, int]:
    """Open for reading, turning each way that fails into its own one-line error."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _fail(path, "model file not found", "check the path") from None
    except PermissionError:
        raise _fail(path, "cannot reach the file: permission denied on a folder above it",
                    "check the permissions of its folders") from None
    except OSError as e:
        raise _fail(path, f"cannot stat the file: {e.strerror}", IO_TROUBLE) from None
    if stat.S_ISDIR(st.st_mode):
        raise _fail(path, "is a directory, not a GGUF file", "pass the .gguf file inside it")
    if not stat.S_ISREG(st.st_mode):
        raise _fail(path, "is not a regular file", "pass a .gguf file")
    try:
        f = open(path, "rb", buffering=1 << 20)  # noqa: SIM115 - closed by the caller
    except PermissionError:
        raise _fail(path, "cannot read the file: permission denied",
                    "make it readable (chmod a+r) or run as a user who can read it") from None
    except OSError as e:
        raise _fail(path, f"cannot open the file: {e.strerror}", IO_TROUBLE) from None
    if st.st_size == 0:
        f.close()
        raise _fail(path, "file is empty (0 bytes)",
                    "the download or conversion failed; fetch the file again")
    return f, st.st_size
