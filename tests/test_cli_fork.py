"""The suite's forked `tuner` commands (tests/cli_fork.py) behave as `python -m tuner` does: the
same output and exit code for the same command, the environment read when used, spawned workers
running the sweep's trials, and a command past its timeout killed."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.cli_run import tuner
from tests.spaces import write_space
from tuner.results.studystore import default_storage, records_of

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def swept(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A forked sweep whose environment names another host: the record must carry that name."""
    root = tmp_path_factory.mktemp("forked")
    space = write_space(root / "s.yaml", n_batch=[16, 32], n_ubatch=[16])
    proc = tuner("sweep", "--model", tiny_model, "--device", "cpu", "--space", space,
                 "--prompt-tokens", 32, "--gen-tokens", 2, "--repetitions", 1,
                 "--results", root / "results", "--out", root / "p.yaml", "--study", "f",
                 "--finalist-rounds", 0, env={"TUNER_HOST": "forked-host"})
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.mark.parametrize("args", [
    ["--help"],
    ["sweep", "--help"],
    ["--version"],
    ["sweep", "--model", "/nonexistent/m.gguf", "--device", "cpu"],
    ["sweep", "--frobnicate"],
    ["doctor", "--log", str(FIXTURES / "cuda-h100-full-offload.log")],
    ["doctor", "--log", str(FIXTURES / "cpu-build-load.log")],
])
def test_a_forked_command_prints_and_exits_as_an_executed_one(args: list[str]) -> None:
    forked, executed = tuner(*args), tuner(*args, exec_=True)
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        executed.returncode, executed.stdout, executed.stderr)


def test_a_forked_report_is_the_executed_report(swept: Path) -> None:
    shown = {}
    for fmt in ("json", "table"):
        forked = tuner("report", "--results", swept / "results", "--format", fmt)
        executed = tuner("report", "--results", swept / "results", "--format", fmt, exec_=True)
        assert forked.returncode == executed.returncode == 0, forked.stderr
        assert forked.stdout == executed.stdout and forked.stderr == executed.stderr
        shown[fmt] = forked.stdout
    rows = json.loads(shown["json"])
    assert rows and {row["study"] for row in rows} == {"f"} and "best" in shown["table"]


def test_a_forked_sweep_reads_the_environment_it_was_given(swept: Path) -> None:
    records = records_of(default_storage(swept / "results"), "f")
    assert len(records) == 2 and all(r.usable for r in records)
    # TUNER_HOST was set for the command only, after the fork server imported tuner.results.claims
    assert {r.environment.hostname for r in records} == {"forked-host"}
    assert (swept / "p.yaml").is_file()


def test_a_forked_command_past_its_timeout_is_killed(swept: Path) -> None:
    """`tuner verify --url` of a service that takes the connection and never answers waits up to
    its own --timeout; the test's shorter one kills the command (no worker of its own to leave)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(subprocess.TimeoutExpired):
            tuner("verify", swept / "p.yaml", "--url", url, "--timeout", 120, timeout=3)
        assert time.monotonic() - started < 60
    after = tuner("--version")  # the fork server goes on serving
    assert after.returncode == 0 and after.stdout.strip()
