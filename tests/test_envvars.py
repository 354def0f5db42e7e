"""The tuner's environment variables (issue 32): each declared once (tuner/machine/envvars.py),
checked at the start of every command; a bad value is one line and exit 2 before any work.
TUNER_STALE_S=-1 once let two sweeps of one study both run every setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_run import one_line_error, tuner
from tests.spaces import write_space
from tuner.errors import BadInput
from tuner.machine.envvars import VARS, read
from tuner.settings import FfnOnHost

BAD = [
    ({"TUNER_STALE_S": "-1"}, "TUNER_STALE_S"),
    ({"TUNER_STALE_S": "abc"}, "TUNER_STALE_S"),
    ({"TUNER_STALE_S": "nan"}, "TUNER_STALE_S"),
    ({"TUNER_STALE_S": "inf"}, "TUNER_STALE_S"),
    ({"TUNER_HEARTBEAT_S": "abc"}, "TUNER_HEARTBEAT_S"),
    ({"TUNER_HEARTBEAT_S": "0"}, "TUNER_HEARTBEAT_S"),
    ({"TUNER_HEARTBEAT_S": "-1"}, "TUNER_HEARTBEAT_S"),
    ({"TUNER_STALE_S": "3", "TUNER_HEARTBEAT_S": "5"}, "must be more than TUNER_HEARTBEAT_S"),
    ({"TUNER_STALE_S": "4"}, "must be more than TUNER_HEARTBEAT_S"),  # the heartbeat's 5 s
    ({"TUNER_HOST": "a\nb"}, "TUNER_HOST"),
    ({"TUNER_HOST": "h" * 300}, "TUNER_HOST"),
    ({"TUNER_FAKE_GPU_FREE_MIB": "-1"}, "TUNER_FAKE_GPU_FREE_MIB"),
    ({"TUNER_N_CPU_MOE": "-1"}, "TUNER_N_CPU_MOE"),
    ({"TUNER_N_CPU_MOE": "2.5"}, "TUNER_N_CPU_MOE"),
    ({"TUNER_N_CPU_MOE": "99999999"}, "TUNER_N_CPU_MOE"),
    ({"TUNER_FFN_ON_HOST": "14"}, "TUNER_FFN_ON_HOST"),
    ({"TUNER_FFN_ON_HOST": "x:down"}, "TUNER_FFN_ON_HOST"),
    ({"TUNER_FFN_ON_HOST": "14:up"}, "TUNER_FFN_ON_HOST"),
]


def test_defaults_and_good_values_are_typed() -> None:
    env = read({})
    assert (env.heartbeat_s, env.stale_s, env.host) == (5.0, 60.0, None)
    env = read({"TUNER_STALE_S": "0.5", "TUNER_HEARTBEAT_S": "0.1", "TUNER_HOST": "h1"})
    assert (env.heartbeat_s, env.stale_s, env.host) == (0.1, 0.5, "h1")
    assert {v.name for v in VARS.values()} == {"TUNER_HEARTBEAT_S", "TUNER_STALE_S",
                                                "TUNER_HOST", "TUNER_N_CPU_MOE",
                                                "TUNER_FFN_ON_HOST", "TUNER_FAKE_GPU_FREE_MIB",
                                                "TUNER_FAKE_HOST_AVAILABLE_MIB"}
    assert (env.fake_gpu_free_mib, env.fake_host_available_mib, env.n_cpu_moe) == (None, None, 0)
    assert read({"TUNER_N_CPU_MOE": "12"}).n_cpu_moe == 12
    assert read({"TUNER_FFN_ON_HOST": "14:gate+down"}).ffn_on_host == FfnOnHost(14, "gate+down")
    assert read({}).ffn_on_host is None
    fake = read({"TUNER_FAKE_GPU_FREE_MIB": "8192", "TUNER_FAKE_HOST_AVAILABLE_MIB": "0"})
    assert (fake.fake_gpu_free_mib, fake.fake_host_available_mib) == (8192.0, 0.0)
    with pytest.raises(BadInput, match="TUNER_FAKE_GPU_FREE_MIB='-1' is not a number of MiB"):
        read({"TUNER_FAKE_GPU_FREE_MIB": "-1"})


@pytest.mark.parametrize(("env", "named"), BAD)
def test_a_bad_value_is_refused(env: dict[str, str], named: str) -> None:
    with pytest.raises(BadInput, match=named) as err:
        read(env)
    assert "\n" not in err.value.message


def test_the_tuner_code_reads_no_variable_of_its_own_but_through_envvars() -> None:
    """One declaration per variable: no other module reads a TUNER_* variable."""
    root = Path(__file__).resolve().parent.parent / "tuner"
    readers = [p.relative_to(root).as_posix() for p in root.rglob("*.py")
               if '"TUNER_' in p.read_text() and p.name != "envvars.py"]
    assert readers == []


@pytest.mark.parametrize(("env", "named"), [BAD[0], BAD[4], BAD[7], BAD[11]])
def test_every_command_refuses_at_the_door(tmp_path: Path, tiny_model: Path,
                                           env: dict[str, str], named: str) -> None:
    """A sweep (before it makes a results folder, starts a worker or a heartbeat), a report and
    a doctor run: one line, exit 2."""
    space = write_space(tmp_path / "s.yaml", n_batch=[8, 16], n_ubatch=[8])
    procs = [tuner("sweep", "--model", tiny_model, "--device", "cpu", "--space", space,
                   "--prompt-tokens", 16, "--gen-tokens", 2, "--repetitions", 1,
                   "--results", tmp_path / "results", "--out", tmp_path / "p.yaml", env=env),
             tuner("report", "--results", tmp_path / "results", env=env),
             tuner("doctor", env=env)]
    for proc in procs:
        assert proc.returncode == 2, proc.stderr
        assert named in one_line_error(proc)
    assert not (tmp_path / "results").exists() and not (tmp_path / "p.yaml").exists()


def test_pythonwarnings_error_with_a_broken_build_record(tmp_path: Path, tiny_model: Path) -> None:
    """PYTHONWARNINGS=error turned the note about a broken builds/<x>/build.json (a Python
    warning then) into exit 1 of `sweep` and `build --list`: it is a note on stderr now."""
    builds = tmp_path / "builds"
    (builds / "x").mkdir(parents=True)
    (builds / "x" / "build.json").write_text("{broken")
    env = {"PYTHONWARNINGS": "error"}
    listed = tuner("build", "--list", "--builds", builds, env=env, exec_=True)
    space = write_space(tmp_path / "s.yaml", n_batch=[16], n_ubatch=[16])
    swept = tuner("sweep", "--model", tiny_model, "--device", "cpu", "--space", space,
                  "--prompt-tokens", 16, "--gen-tokens", 2, "--repetitions", 1,
                  "--builds", builds, "--results", tmp_path / "results",
                  "--out", tmp_path / "p.yaml", "--finalist-rounds", 0, env=env, exec_=True)
    for proc in (listed, swept):
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
        assert f"note: skipping the broken build record {builds / 'x' / 'build.json'}" \
            in proc.stderr
