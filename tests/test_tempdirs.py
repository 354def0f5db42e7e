"""The temporary folders a SIGKILLed tuner leaves are removed by the next one
(tuner/machine/tempdirs.py): real child processes make them and are killed; folders of a live
process, without a marker, of another prefix or behind a link stay. The temporary root is a
folder of the test's own (TMPDIR), never the machine's /tmp."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuner.machine import tempdirs

REPO = Path(__file__).resolve().parents[1]
MAKER = ("import sys, time\n"
         "from tuner.machine.tempdirs import temp_dir\n"
         "t = temp_dir(sys.argv[1])\n"
         "print(t.name, flush=True)\n"
         "time.sleep(600)\n")


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    r = tmp_path / "tmp"
    r.mkdir()
    monkeypatch.setenv("TMPDIR", str(r))
    monkeypatch.setattr(tempfile, "tempdir", str(r))  # gettempdir's cached answer
    return r


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def made_by_child(root: Path, prefix: str,
                  procs: list[subprocess.Popen[str]]) -> tuple[Path, subprocess.Popen[str]]:
    """A folder ``prefix`` made through the helper by a child python, still running."""
    p = subprocess.Popen([sys.executable, "-c", MAKER, prefix], cwd=REPO, text=True,
                         stdout=subprocess.PIPE, env={**os.environ, "TMPDIR": str(root)})
    procs.append(p)
    assert p.stdout is not None
    folder = Path(p.stdout.readline().strip())
    assert folder.parent == root and folder.name.startswith(prefix)
    assert tempdirs.read_marker(folder) is not None
    return folder, p


def test_a_folder_of_a_killed_process_is_removed_by_the_next(
        root: Path, children: list[subprocess.Popen[str]]) -> None:
    killed, proc = made_by_child(root, "tuner-verify-", children)
    (killed / "server.log").write_text("a log\n")
    live, _ = made_by_child(root, "tuner-llsrv-", children)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed.is_dir(), "nothing ran to remove it"
    with tempdirs.temp_dir("tuner-served-") as mine:
        assert not killed.exists()
        assert live.is_dir() and tempdirs.read_marker(live) is not None
        owner = tempdirs.read_marker(Path(mine))
        assert owner is not None and owner.pid == os.getpid()
    assert not Path(mine).exists()


def test_only_folders_with_a_marker_of_a_gone_process_are_removed(
        root: Path, children: list[subprocess.Popen[str]]) -> None:
    live, proc = made_by_child(root, "tuner-probe-", children)
    owner = tempdirs.read_marker(live)
    assert owner is not None and owner.pid == proc.pid

    def folder(name: str, marker: object | None) -> Path:
        d = root / name
        d.mkdir()
        if marker is not None:
            (d / tempdirs.MARKER).write_text(marker if isinstance(marker, str)
                                             else json.dumps(marker))
        return d

    base = {"pid": proc.pid, "start": owner.start, "pidns": owner.pidns, "boot": owner.boot}
    reused = folder("tuner-verify-reused", {**base, "start": owner.start - 1})  # a reused pid
    rebooted = folder("tuner-doctor-old", {**base, "boot": "another boot"})
    kept = [
        folder("tuner-verify-nomarker", None),
        folder("tuner-verify-badmarker", "{not json"),
        folder("tuner-verify-wrongfields", {"pid": proc.pid}),
        folder("tuner-served-otherns", {**base, "start": 1, "pidns": "pid:[1]"}),
        folder("other-prefix-gone", {**base, "start": owner.start - 1}),
    ]
    target = folder("elsewhere", {**base, "start": owner.start - 1})
    link = root / "tuner-verify-link"
    link.symlink_to(target)
    kept += [link, target]
    # A pid now running another process, and a marker of an earlier boot: gone.
    assert sorted(tempdirs.remove_stale()) == sorted([reused, rebooted])
    assert live.is_dir()
    proc.kill()
    proc.wait()
    assert tempdirs.remove_stale() == [live]
    assert all(p.exists() for p in kept)


def test_the_live_process_keeps_its_folder(
        root: Path, children: list[subprocess.Popen[str]]) -> None:
    live, _ = made_by_child(root, "tuner-verify-", children)
    tempdirs.temp_dir("tuner-llsrv-").cleanup()
    tempdirs.remove_stale()
    assert live.is_dir()


def test_an_unknown_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of"):
        tempdirs.temp_dir("other-")
