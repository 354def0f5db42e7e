"""Open a page in a real headless Chromium (Debian's `chromium`) and report what a person's
browser would: console messages and uncaught exceptions, the browser's own error log entries
(failed resource loads), every request the page made, and a full-page screenshot.

Talks the DevTools protocol over a pipe (--remote-debugging-pipe: JSON messages ended by NUL on
file descriptors 3 and 4), so nothing listens on a port and no extra package is needed."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class PageRun:
    console: list[str] = field(default_factory=list)  # "type: text" of every console call
    errors: list[str] = field(default_factory=list)  # exceptions and error-level log entries
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    screenshot: bytes = b""
    title: str = ""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class _Pipe:
    def __init__(self, write_fd: int, read_fd: int) -> None:
        self.w, self.r, self.buf, self.next_id = write_fd, read_fd, b"", 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        return self.next_id

    def _read_one(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buf:
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buf += chunk
        raw, _, self.buf = self.buf.partition(b"\0")
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60) -> dict[str, Any]:
        want = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read_one(deadline)
            if msg.get("id") == want:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, method: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        while True:
            msg = self._read_one(deadline)
            if msg.get("method") == method:
                return msg
            self.events.append(msg)


def _onto_3_and_4(read_fd: int, write_fd: int) -> None:
    """In the child: the command pipe on fd 3, the answer pipe on fd 4 (via fds >= 10 first,
    so neither overwrites the other)."""
    high_r = fcntl.fcntl(read_fd, fcntl.F_DUPFD, 10)
    high_w = fcntl.fcntl(write_fd, fcntl.F_DUPFD, 10)
    os.dup2(high_r, 3)
    os.dup2(high_w, 4)


def open_page(url: str, width: int = 1200, settle_s: float = 0.5) -> PageRun:
    """Load ``url`` in headless Chromium and return what happened (see ``PageRun``)."""
    exe = chromium()
    if exe is None:
        raise RuntimeError("chromium is not installed: apt-get install -y chromium")
    profile = tempfile.mkdtemp(prefix="tuner-chromium-")
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()
    # Chromium reads commands on fd 3 and writes answers on fd 4.
    proc = subprocess.Popen(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-default-apps", f"--user-data-dir={profile}", "--remote-debugging-pipe",
         "about:blank"],
        pass_fds=(3, 4), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: _onto_3_and_4(to_chrome_r, from_chrome_w),
    )
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    pipe = _Pipe(to_chrome_w, from_chrome_r)
    run = PageRun()
    try:
        target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            pipe.call(f"{domain}.enable", session=s)
        pipe.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900,
                                                         "deviceScaleFactor": 1,
                                                         "mobile": False}, session=s)
        pipe.events.clear()  # about:blank's own events
        pipe.call("Page.navigate", {"url": url}, session=s)
        pipe.wait_event("Page.loadEventFired")
        time.sleep(settle_s)
        run.title = pipe.call("Runtime.evaluate", {"expression": "document.title",
                                                   "returnByValue": True},
                              session=s)["result"].get("value", "")
        shot = pipe.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport":
                                                    True}, session=s, timeout=120)
        run.screenshot = base64.b64decode(shot["data"])
        for e in pipe.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled":
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
                run.console.append(f"{p['type']}: {text}")
                if p["type"] in ("error", "assert", "warning"):
                    run.errors.append(f"console.{p['type']}: {text}")
            elif method == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                run.errors.append("exception: " + (d.get("exception", {}).get("description")
                                                   or d.get("text", "")))
            elif method == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                run.errors.append(f"log {p['entry']['level']}: {p['entry']['text']} "
                                  f"{p['entry'].get('url', '')}".strip())
            elif method == "Network.requestWillBeSent":
                run.requests.append(p["request"]["url"])
            elif method == "Network.loadingFailed":
                run.errors.append(f"load failed: {p.get('errorText')}")
        with contextlib.suppress(OSError):
            pipe.send("Browser.close")
    finally:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(to_chrome_w)
        os.close(from_chrome_r)
        shutil.rmtree(profile, ignore_errors=True)
    return run


def page_of(path: Path) -> PageRun:
    return open_page(Path(path).resolve().as_uri())
