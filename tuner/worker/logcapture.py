"""Capture llama.cpp's log through ``llama_log_set``: every line is kept in memory for the
placement evidence and appended to a file, so the parent can read the tail after a crash."""

from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class LogCapture:
    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._chunks: list[str] = []
        self._mark = 0
        self._callback: Any = None  # keep the ctypes callback alive

    def install(self, llama_cpp: Any) -> None:
        @llama_cpp.llama_log_callback
        def _on_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            self.write(text.decode("utf-8", errors="replace") if text else "")

        self._callback = _on_log
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))

    @contextmanager
    def quiet(self, llama_cpp: Any) -> Iterator[None]:
        """No Python callback inside a timed region. With CUDA, llama.cpp logs a debug line per
        generated token (about 129 per 2048 + 128 request on an H100), and each call into
        Python takes the GIL and a write: an observer inside the measurement. llama-bench
        installs a null logger; here llama.cpp's own C logger takes over for the duration and
        writes to the worker's stderr file, which keeps an abort's last words."""
        if self._callback is None:
            yield
            return
        llama_cpp.llama_log_set(llama_cpp.llama_log_callback(), ctypes.c_void_p(0))  # NULL
        try:
            yield
        finally:
            llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))

    def write(self, text: str) -> None:
        self._chunks.append(text)
        # Unbuffered: after an abort() the file must already hold what led to it.
        os.write(self._fd, text.encode("utf-8", errors="replace"))

    def text(self) -> str:
        return "".join(self._chunks)

    def move_to(self, path: str) -> None:
        """Log to ``path`` from now on, starting with everything logged so far."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(fd, self.text().encode("utf-8", errors="replace"))
        os.close(self._fd)
        self._fd, self.path = fd, path

    def mark(self) -> None:
        """Start a new section: ``since_mark`` returns what was logged after this call."""
        self._mark = len(self._chunks)

    def since_mark(self) -> str:
        return "".join(self._chunks[self._mark:])

    def cut_since_mark(self) -> str:
        """``since_mark``, then forget those lines (the file keeps them): for bulky sections a
        worker needs once, such as the scheduler's operation report, so memory does not grow."""
        text = self.since_mark()
        del self._chunks[self._mark:]
        return text

    def tail(self, n: int = 30) -> list[str]:
        return self.text().splitlines()[-n:]


def read_tail(path: str, n: int = 30, max_bytes: int = 256 * 1024) -> list[str]:
    """The last lines of a worker's log file, read by the parent after the worker died."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    if start > 0:  # the read began inside a line: that piece is no line of the log
        data = data.partition("\n")[2]
    return [line for line in data.splitlines() if line.strip()][-n:]


# ggml_abort's message, "<source file>:<line>: <message>" (a failed GGML_ASSERT, a CUDA error),
# printed to stderr right before the backtrace (gdb's, or backtrace_symbols') that ends a dead
# worker's stderr: a backtrace of up to 100 frames, longer in gdb's words, would push the lines
# that say why (llama.cpp's "CUDA error: out of memory" just above the message) out of a tail.
_ABORT_MESSAGE = re.compile(r"^\S+\.(?:c|cc|cpp|cu|cuh|h|hpp):\d+: ")
STDIO_SCAN = 400  # lines of a dead worker's stderr searched for the abort's message


def last_words(path: str, n: int = 10) -> list[str]:
    """The last ``n`` lines a dead worker wrote to stderr (``path``) up to ggml's abort message,
    the backtrace after it left out; the last ``n`` lines where there is no such message (a
    segfault, a signal from outside)."""
    lines = read_tail(path, STDIO_SCAN)
    at = next((i for i in range(len(lines) - 1, -1, -1) if _ABORT_MESSAGE.match(lines[i])), None)
    return (lines if at is None else lines[:at + 1])[-n:]
