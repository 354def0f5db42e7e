"""No process outlives its command (issue 32): a trial worker, the served-path child and the
real llama_cpp.server that `tuner verify` starts end when the command ends, SIGKILL included
(tuner/machine/children.py); `tuner verify` ended by SIGTERM or SIGINT prints one line, exits
143 / 130 and leaves no temporary folder. Real processes: the real CLI, the real server, the
tiny model on the CPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_run import REPO, tuner
from tests.spaces import write_space
from tuner.machine.children import GroupWatchdog, popen_kwargs


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def descendants(root: int) -> dict[int, str]:
    """Every live process under ``root``, with its command line."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(st[1], []).append(int(entry.name))
    out, todo = {}, [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            out[pid] = cmd
            todo.append(pid)
    return out


def wait_gone(pids: list[int], within: float = 8.0) -> list[int]:
    """The pids still alive after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(map(alive, pids)):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def start(*args: object, tmpdir: Path) -> subprocess.Popen:
    """``python -m tuner ARGS`` with its own TMPDIR (to see its temporary folders)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmpdir), "COLUMNS": "200"}
    # started as a user's shell starts it: its own process group, Ctrl-C's default action (a
    # test runner in the background of a non-interactive shell has SIGINT ignored)
    return subprocess.Popen([sys.executable, "-m", "tuner", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_child(proc: subprocess.Popen, needle: str, timeout: float = 240) -> dict[int, str]:
    """The command's descendants once one whose command line holds ``needle`` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = descendants(proc.pid)
        if any(needle in cmd for cmd in found.values()):
            return found
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError(f"no {needle} child within {timeout} s")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A real one-setting CPU sweep of the tiny model and the config it wrote."""
    root = tmp_path_factory.mktemp("deployed")
    space = write_space(root / "s.yaml", n_batch=[16], n_ubatch=[16])
    out = root / "production.yaml"
    proc = tuner("sweep", "--model", tiny_model, "--device", "cpu", "--space", space,
                 "--prompt-tokens", 16, "--gen-tokens", 4, "--repetitions", 1,
                 "--results", root / "results", "--out", out, "--finalist-rounds", 0)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130),
                                           (signal.SIGKILL, -9)])
def test_verify_ended_by_a_signal_leaves_no_server(deployed: Path, tmp_path: Path,
                                                  sig: int, code: int) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = start("verify", deployed, "--timeout", 120, tmpdir=tmpdir)
    children = wait_for_child(proc, "llama_cpp.server")
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # Ctrl-C reaches the whole process group, the server too
    else:
        os.kill(proc.pid, sig)  # a service manager, or the OOM killer
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert wait_gone(list(children)) == [], "a server outlived `tuner verify`"
    if sig != signal.SIGKILL:
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert lines == ["interrupted: run the same command to resume"], stderr
        assert list(tmpdir.iterdir()) == [], "a temporary folder was left behind"


@pytest.mark.parametrize(("needle", "delay"), [("multiprocessing", 0.0),
                                               ("multiprocessing", 2.0),
                                               ("llama_cpp.server", 0.0)])
def test_a_sigkilled_sweep_leaves_no_process(tiny_model: Path, tmp_path: Path,
                                             needle: str, delay: float) -> None:
    """SIGKILL once a child runs (a probe or trial worker, and the real llama_cpp.server of
    the finalists' served phase), at once or a little later: every process it had started
    ends within seconds."""
    space = write_space(tmp_path / "s.yaml", n_batch=[8, 16, 32], n_ubatch=[8])
    proc = start("sweep", "--model", tiny_model, "--device", "cpu", "--space", space,
                 "--prompt-tokens", 16, "--gen-tokens", 4, "--repetitions", 1,
                 "--results", tmp_path / "results", "--out", tmp_path / "p.yaml",
                 "--finalist-rounds", 1, "--served-requests", 2, tmpdir=tmp_path)
    seen = wait_for_child(proc, needle)
    time.sleep(delay)
    seen.update(descendants(proc.pid))
    proc.kill()
    proc.communicate(timeout=60)
    assert wait_gone(list(seen)) == [], {p: seen[p] for p in seen if alive(p)}


def test_a_popen_child_dies_with_its_parent(tmp_path: Path) -> None:
    """The mechanism itself: a parent SIGKILLed, its child (asked for SIGKILL) ends too; a
    build's process group, watched, ends too."""
    code = (f"import subprocess, sys, time, os; sys.path.insert(0, {str(REPO)!r})\n"
            "from tuner.machine.children import popen_kwargs, GroupWatchdog\n"
            "c = subprocess.Popen(['sleep', '300'], **popen_kwargs())\n"
            "g = subprocess.Popen(['sh', '-c', 'sleep 300 & sleep 300'], "
            "start_new_session=True)\n"
            "w = GroupWatchdog(g.pid)\n"
            "print(c.pid, g.pid, w.proc.pid, flush=True); time.sleep(300)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child, group, _ = map(int, parent.stdout.readline().split())
    time.sleep(0.5)
    members = [group, *descendants(group)]
    assert len(members) == 3
    parent.kill()
    parent.wait()
    assert wait_gone([child, *members]) == []
    assert popen_kwargs()["preexec_fn"] is not None and GroupWatchdog is not None
