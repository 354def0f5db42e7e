"""Every file the tuner writes goes through one routine (tuner/machine/output.py, issue 32):
regular files replaced atomically, a symbolic link followed (its target replaced, said on
stderr), a device, FIFO, socket or folder refused with exit 2 before any work. As root,
`report -o /dev/full` once replaced the device node with a regular file, and `--out` a link
replaced the link and left its target as it was while the tool printed "wrote"."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_run import one_line_error, tuner
from tests.spaces import write_space
from tuner.errors import BadInput
from tuner.machine.output import replace_files, target_of, write_file


def special_files(folder: Path) -> Iterator[tuple[str, Path]]:
    """A FIFO, a socket and (as root) a character device like /dev/null, made in ``folder``."""
    fifo = folder / "fifo"
    os.mkfifo(fifo)
    yield "FIFO", fifo
    sock_path = folder / "sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    yield "socket", sock_path
    dev = folder / "null"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pass
    else:
        yield "character device", dev
    sock.close()


def kinds(path: Path) -> int:
    return stat.S_IFMT(os.lstat(path).st_mode)


def test_a_regular_file_is_replaced_whole_keeping_its_mode(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    assert write_file(f, b"one", "x") == f and f.read_bytes() == b"one"
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
    f.chmod(0o600)
    write_file(f, b"two", "x")
    assert f.read_bytes() == b"two" and stat.S_IMODE(f.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temporary file left


def test_a_link_is_followed_and_said(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "config.yaml"
    target.write_text("old")
    link = tmp_path / "link.yaml"
    link.symlink_to(target)
    chain = tmp_path / "chain.yaml"
    chain.symlink_to(link)
    written = replace_files([(chain, b"new")], "x", backup=True)
    assert written == [(target, target.with_name("config.yaml.bak"))]
    assert target.read_text() == "new" and target.with_name("config.yaml.bak").read_text() == "old"
    assert link.is_symlink() and chain.is_symlink()
    assert f"{chain} is a symbolic link: wrote its target {target}" in capsys.readouterr().err
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "real" / "new.txt")
    write_file(dangling, b"made", "x")
    assert (tmp_path / "real" / "new.txt").read_bytes() == b"made" and dangling.is_symlink()


def test_special_files_and_folders_are_refused(tmp_path: Path) -> None:
    for kind, path in [*special_files(tmp_path), ("directory", tmp_path)]:
        before = kinds(path)
        for given in (path, _link_to(path, tmp_path)):
            with pytest.raises(BadInput, match=f"it is a {kind}"):
                write_file(given, b"x", "the report")
        assert kinds(path) == before


def _link_to(path: Path, folder: Path) -> Path:
    link = folder / f"link-to-{path.name}"
    if not link.is_symlink():
        link.symlink_to(path)
    return link


def test_report_to_a_special_file_is_refused_at_once(cpu_sweep: dict, tmp_path: Path) -> None:
    for kind, path in special_files(tmp_path):
        before = kinds(path)
        proc = tuner("report", "--results", cpu_sweep["results"], "-o", path, timeout=60)
        assert proc.returncode == 2 and f"it is a {kind}" in one_line_error(proc)
        assert kinds(path) == before, "the special file was replaced"


def test_report_through_a_link_writes_its_target(cpu_sweep: dict, tmp_path: Path) -> None:
    target = tmp_path / "reports" / "r.md"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "r.md"
    link.symlink_to(target)
    proc = tuner("report", "--results", cpu_sweep["results"], "--format", "md", "-o", link)
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and target.read_text().startswith("|")
    assert f"wrote its target {target}" in proc.stderr


@pytest.fixture()
def space(tmp_path: Path) -> Path:
    return write_space(tmp_path / "s.yaml", n_batch=[16], n_ubatch=[16])


def _sweep(model: Path, root: Path, out: Path, space: Path):
    return tuner("sweep", "--model", model, "--device", "cpu", "--space", space,
                 "--prompt-tokens", 16, "--gen-tokens", 2, "--repetitions", 1,
                 "--results", root / "results", "--out", out, "--finalist-rounds", 0)


@pytest.mark.parametrize("which", ["production.yaml", "production.tuner.json",
                                   "production.env", "production.yaml.bak"])
def test_a_sweep_refuses_a_special_output_before_any_work(tiny_model: Path, tmp_path: Path,
                                                          space: Path, which: str) -> None:
    os.mkfifo(tmp_path / which)
    proc = _sweep(tiny_model, tmp_path, tmp_path / "production.yaml", space)
    assert proc.returncode == 2 and "FIFO" in one_line_error(proc)
    assert not (tmp_path / "results").exists(), "work began before the output was checked"
    assert kinds(tmp_path / which) == stat.S_IFIFO


def test_a_sweep_writes_through_a_linked_config(tiny_model: Path, tmp_path: Path,
                                                space: Path) -> None:
    (tmp_path / "etc").mkdir()
    target = tmp_path / "etc" / "production.yaml"
    target.write_text("old: config\n")
    link = tmp_path / "production.yaml"
    link.symlink_to(target)
    proc = _sweep(tiny_model, tmp_path, link, space)
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and "models:" in target.read_text()
    assert target.with_name("production.yaml.bak").read_text() == "old: config\n"
    assert f"wrote its target {target}" in proc.stderr
    assert target_of(link, "x") == target
