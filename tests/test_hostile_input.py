"""A hostile but realistic user, through the real CLI on real processes and a real SQLite file
(issue 9): a study whose space changes, a study whose identity is contradicted by its records, a
caller's environment that would break the server-config check, damaged stores, a huge space, bad
values, bare `tuner`, Ctrl-C and SIGTERM. Each ends with the right exit code and one readable
line, and the stored records before and after are compared: nothing lost, nothing duplicated,
no trial of another model admitted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.cli_run import digest_tree, one_line_error, tuner
from tests.malformed_corpus import run_unprivileged_prefix, world_readable_tmpdir
from tests.spaces import write_space
from tests.test_bad_input import bad_sweep
from tests.workerhooks import faults
from tuner.results.storeerrors import open_storage
from tuner.results.studystore import IDENTITY, default_storage, records_of

State = optuna.trial.TrialState


def sweep(model: Path, root: Path, *extra: object, study: str = "h", env=None, timeout=600):
    """A small sweep; no finalist stage unless ``extra`` asks for one (a later option wins)."""
    return tuner("sweep", "--model", model, "--device", "cpu", "--prompt-tokens", 32,
                 "--gen-tokens", 2, "--repetitions", 1, "--warmup", 0,
                 "--results", root / "results", "--out", root / "production.yaml",
                 "--study", study, "--finalist-rounds", 0, *extra, env=env, timeout=timeout)


def records(root: Path, study: str = "h") -> list:
    return records_of(default_storage(root / "results"), study)


def states(root: Path, study: str = "h") -> list:
    s = optuna.load_study(study_name=study, storage=f"sqlite:///{root / 'results' / 'optuna.db'}")
    return [t.state for t in s.get_trials(deepcopy=False)]


def last_error(proc: subprocess.CompletedProcess) -> str:
    """A failure after progress lines: no traceback, one 'error:' line, only a hint after it."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [i for i, ln in enumerate(lines) if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert all(ln.startswith("hint: ") for ln in lines[errors[0] + 1:]), proc.stderr
    return lines[errors[0]]


def assert_kept(before: list, after: list) -> None:
    """Every record stored before is still there, unchanged; no setting stored twice."""
    by_id = {r.trial_id: r for r in after}
    assert all(by_id.get(r.trial_id) == r for r in before), "a stored record was lost or changed"
    keys = [r.spec_key for r in after]
    assert len(keys) == len(set(keys)), "a setting was stored twice"


@pytest.fixture(scope="module")
def done_template(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real paused study of the tiny model (1 trial of 2 settings), made once per module
    (the identity and damaged-store cases start from copies of it)."""
    root = tmp_path_factory.mktemp("done")
    space = write_space(root / "s.yaml", n_batch=[16, 32], n_ubatch=[16])
    assert sweep(tiny_model, root, "--space", space, "--trials", 1).returncode == 0
    return root


@pytest.fixture()
def done_study(done_template: Path, tmp_path: Path) -> Path:
    """A copy of that study for one test to damage (the SQLite file and the folder it sits in)."""
    shutil.copytree(done_template, tmp_path, dirs_exist_ok=True)
    return tmp_path


# -- 1. a study takes a new space ---------------------------------------------------------------
def test_changed_space_keeps_history_and_adds_new_points(tiny_model: Path, tmp_path: Path) -> None:
    a = write_space(tmp_path / "a.yaml", n_batch=[16, 32], n_ubatch=[16])
    b = write_space(tmp_path / "b.yaml", n_batch=[8, 16], n_ubatch=[8],
                    flash_attn=[False, True], n_threads=[1])
    first = sweep(tiny_model, tmp_path, "--space", a, "--trials", 1)
    assert first.returncode == 0, first.stderr
    before = records(tmp_path)
    for attempt in range(2):  # narrower/wider, twice: every later run used to exit 1
        again = sweep(tiny_model, tmp_path, "--space", b, "--trials", 1 + attempt)
        assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr
    full = sweep(tiny_model, tmp_path, "--space", b)
    assert full.returncode == 0, full.stderr
    after = records(tmp_path)
    assert_kept(before, after)
    assert len(after) == 1 + 4  # the old space's trial as history + the 4 new points
    spaces = {r.space_id for r in after}
    assert len(spaces) == 2 and None not in spaces, "each trial says which space it came from"
    assert State.FAIL not in states(tmp_path) and State.RUNNING not in states(tmp_path)
    # The config is chosen among the current space's trials only.
    assert "b16/u16" not in full.stdout.split("best #")[1].splitlines()[0]
    back = sweep(tiny_model, tmp_path, "--space", a)  # and back to the first space
    assert back.returncode == 0, back.stderr
    assert_kept(after, records(tmp_path))
    assert len(records(tmp_path)) == 6


# -- 3. identity against the records -------------------------------------------------------------
def other_model(tiny_model: Path, tmp_path: Path) -> Path:
    data = bytearray(tiny_model.read_bytes())
    data[-1] ^= 0x01  # another model (another SHA-256), still well-formed
    path = tmp_path / "other.gguf"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("identity", [None, "not a dict"])
def test_records_refuse_another_model_without_the_study_identity(identity: object,
                                                                 tiny_model: Path,
                                                                 done_study: Path) -> None:
    """The stored records are the study's identity too, whatever its identity attribute says
    (unset, as by a study begun before it existed, or damaged)."""
    tmp_path, space = done_study, done_study / "s.yaml"  # a real study of tiny_model
    url = default_storage(tmp_path / "results")
    storage = open_storage(url)
    storage.set_study_user_attr(storage.get_study_id_from_name("h"), IDENTITY, identity)
    storage.engine.dispose()
    before = digest_tree(tmp_path)
    proc = sweep(other_model(tiny_model, tmp_path), tmp_path, "--space", space)
    assert proc.returncode == 2
    assert "another model" in one_line_error(proc)
    after = digest_tree(tmp_path)
    for cache in ("other.gguf", "results/.model-hashes.json"):  # the input, a hash cache
        after.pop(cache, None)
        before.pop(cache, None)
    assert after == before, "nothing stored changed; no trial of the other model admitted"


def test_storage_refuses_another_model(tiny_model: Path, done_study: Path) -> None:
    tmp_path, space = done_study, done_study / "s.yaml"  # a real study of tiny_model
    before = records(tmp_path)
    assert before
    proc = sweep(other_model(tiny_model, tmp_path), tmp_path, "--space", space)
    assert proc.returncode == 2
    assert "another model" in one_line_error(proc)
    assert records(tmp_path) == before


# -- 4. the end checked at the start, in a clean environment -------------------------------------
def test_callers_environment_does_not_reach_the_config_check(tiny_model: Path,
                                                             tmp_path: Path) -> None:
    space = write_space(tmp_path / "s.yaml", n_batch=[16], n_ubatch=[16])
    hostile = {"LLAMA_CPP_LIB_PATH": str(tmp_path / "stale-lib"), "SEED": "not-a-number",
               "PORT": "eighty", "MODEL": "/nope.gguf", "VERBOSE": "maybe", "N_CTX": "huge",
               "HOST": "::nonsense::", "CACHE": "sometimes"}
    # One finalist round: the finalist stage runs from the hostile environment too.
    proc = sweep(tiny_model, tmp_path, "--space", space, "--finalist-rounds", 1, env=hostile)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "production.yaml").is_file()


def test_stale_build_library_stops_before_the_first_trial(tiny_model: Path,
                                                          tmp_path: Path) -> None:
    from tuner.errors import EnvironmentUnfit
    from tuner.specs import ContextSettings, ModelSettings, TrialSpec, Workload
    from tuner.sweep.preflight import preflight_config

    spec = TrialSpec(model=ModelSettings(device="cpu"), context=ContextSettings())
    with pytest.raises(EnvironmentUnfit, match="could not load its library"):
        preflight_config(spec, Workload(), str(tiny_model), {"gone": str(tmp_path / "nolib")})


def test_unwritable_out_folder_refused_before_any_trial(tiny_model: Path) -> None:
    root = world_readable_tmpdir("tuner-out-")
    model = root / "m.gguf"  # where the unprivileged user can read it
    shutil.copyfile(tiny_model, model)
    model.chmod(0o644)
    space = write_space(root / "s.yaml", n_batch=[16], n_ubatch=[16])
    locked = root / "locked"
    locked.mkdir(mode=0o555)
    results = root / "results"
    results.mkdir(mode=0o777)
    proc = tuner("sweep", "--model", model, "--device", "cpu", "--space", space,
                 "--prompt-tokens", 32, "--gen-tokens", 2, "--results", results,
                 "--out", locked / "production.yaml", prefix=run_unprivileged_prefix(),
                 env={"PYTHONNOUSERSITE": "1", "HOME": str(root)})
    assert proc.returncode == 2, proc.stderr
    assert "not writable" in one_line_error(proc)
    assert not (results / "optuna.db").exists(), "no trial ran"
    shutil.rmtree(root, ignore_errors=True)


# -- 5. damaged or unusable stores ---------------------------------------------------------------
@pytest.mark.parametrize("damage, code, phrase", [
    ("truncated", 2, "move"),
    ("text", 2, "damaged or not an optuna database"),
    ("directory", 2, "is a directory"),
    ("emptied", 2, "emptied or replaced"),
])
def test_damaged_store_is_one_line_and_never_reuses_numbers(damage: str, code: int, phrase: str,
                                                             done_study: Path,
                                                             tiny_model: Path) -> None:
    db = done_study / "results" / "optuna.db"
    data = db.read_bytes()
    if damage == "truncated":
        db.write_bytes(data[: len(data) // 3])
    elif damage == "text":
        db.write_text("these are my notes, not a database\n" * 50)
    elif damage == "directory":
        db.unlink()
        db.mkdir()
    else:  # an older version's results folder (its records in trials.jsonl), storage emptied
        export = tuner("report", "--results", done_study / "results", "--format", "jsonl",
                       "-o", done_study / "results" / "h" / "trials.jsonl")
        assert export.returncode == 0, export.stderr
        db.write_bytes(b"")
    before = digest_tree(done_study)
    proc = sweep(tiny_model, done_study, "--space", done_study / "s.yaml")
    assert proc.returncode == code, proc.stderr
    assert phrase in proc.stderr and one_line_error(proc)
    after = digest_tree(done_study)
    if damage == "emptied":  # opening an empty file makes optuna's tables: no trial in them
        assert records(done_study) == [] and after.pop("results/optuna.db")
        before.pop("results/optuna.db")
    assert after == before, "nothing stored changed"


def test_unknown_storage_scheme(done_study: Path, tiny_model: Path) -> None:
    before = digest_tree(done_study)
    for url in ("foo://bar", "not-a-url"):
        proc = sweep(tiny_model, done_study, "--space", done_study / "s.yaml", "--storage", url)
        assert proc.returncode == 2, proc.stderr
        assert "--storage" in one_line_error(proc)
    assert digest_tree(done_study) == before


def test_database_without_driver_or_unreachable_is_exit_3(done_study: Path,
                                                          tiny_model: Path) -> None:
    before = digest_tree(done_study)
    proc = sweep(tiny_model, done_study, "--space", done_study / "s.yaml",
                 "--storage", "postgresql://tuner@127.0.0.1:1/nowhere")
    assert proc.returncode == 3, proc.stderr
    assert "storage" in one_line_error(proc)
    assert digest_tree(done_study) == before


@pytest.mark.parametrize("storage_on_full_disk", [True, False])
def test_full_disk_stops_with_exit_3_and_resumes(storage_on_full_disk: bool, tiny_model: Path,
                                                 tmp_path: Path) -> None:
    """Records and optuna.db on a full disk, or only the records (the storage elsewhere)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        space = write_space(tmp_path / "s.yaml", n_batch=[8, 16, 32], n_ubatch=[8])
        args: tuple = ("--space", space, "--finalist-rounds", 0)
        if not storage_on_full_disk:
            args += ("--storage", f"sqlite:///{tmp_path / 'optuna.db'}")
        first = tuner("sweep", "--model", tiny_model, "--device", "cpu", "--prompt-tokens", 32,
                      "--gen-tokens", 2, "--repetitions", 1, "--warmup", 0, "--results",
                      disk / "results", "--out", tmp_path / "p.yaml", "--study", "h",
                      "--trials", 1, *args)
        assert first.returncode == 0, first.stderr
        before = records(disk)
        with open(disk / "filler", "wb", buffering=0) as f:  # fill the disk to the last byte
            for chunk in (65536, 4096, 512, 1):
                try:
                    while True:
                        f.write(b"\0" * chunk)
                except OSError:
                    pass
        full = tuner("sweep", "--model", tiny_model, "--device", "cpu", "--prompt-tokens", 32,
                     "--gen-tokens", 2, "--repetitions", 1, "--warmup", 0, "--results",
                     disk / "results", "--out", tmp_path / "p.yaml", "--study", "h", *args)
        assert full.returncode == 3, full.stderr
        line = last_error(full)
        assert "full" in line or "space" in line, line
        assert "free space" in full.stderr
        (disk / "filler").unlink()
        # A record may still fit in a free page of the database: whatever was stored is whole,
        # nothing earlier is lost, nothing is there twice.
        assert_kept(before, records(disk) if storage_on_full_disk else records_of(
            f"sqlite:///{tmp_path / 'optuna.db'}", "h"))
        again = tuner("sweep", "--model", tiny_model, "--device", "cpu", "--prompt-tokens", 32,
                      "--gen-tokens", 2, "--repetitions", 1, "--warmup", 0, "--results",
                      disk / "results", "--out", tmp_path / "p.yaml", "--study", "h", *args)
        assert again.returncode == 0, again.stderr
        after = records(disk) if storage_on_full_disk else records_of(
            f"sqlite:///{tmp_path / 'optuna.db'}", "h")
        assert_kept(before, after)
        assert len(after) == 3
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# -- 6. large spaces -----------------------------------------------------------------------------
def test_space_of_100000_combinations_starts_promptly(tiny_model: Path, tmp_path: Path) -> None:
    # Largest batches first: the one trial (the plan's first setting) takes its 128-token
    # prompt in one batch, not in 128 (what is timed here is the planning, not the trial).
    space = write_space(tmp_path / "big.yaml", n_batch=list(range(100, 0, -1)),
                        n_ubatch=list(range(10, 0, -1)), kv_cache=["f16/f16", "f32/f32"],
                        flash_attn=[False, True], n_threads=list(range(1, 26)))
    started = time.monotonic()
    proc = sweep(tiny_model, tmp_path, "--space", space, "--trials", 1, "--prompt-tokens", 128,
                 "--no-sentinel", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 240
    lines = proc.stderr.splitlines()
    planned = next(i for i, ln in enumerate(lines) if "settings in the grid" in ln)
    first_trial = next(i for i, ln in enumerate(lines) if ln.strip().startswith("#"))
    assert planned < first_trial
    assert int(lines[planned].split()[0].replace(",", "")) > 90_000
    assert len(records(tmp_path)) == 1


def test_space_above_the_limit_is_refused_with_a_hint(stored: dict, tmp_path: Path) -> None:
    space = write_space(tmp_path / "huge.yaml", n_batch=list(range(1, 1001)),
                        n_ubatch=list(range(1, 301)))
    line = bad_sweep(stored, "--space", space)
    assert "300,000 combinations" in line and "limit" in line


# -- 7. validation where input enters ------------------------------------------------------------
@pytest.mark.parametrize("values, phrase", [
    ({"n_threads": [0]}, "n_threads"),
    ({"n_threads": [-1]}, "n_threads"),
    ({"builds": []}, "builds"),
    ({"kv_cache": []}, "kv_cache"),
])
def test_bad_space_values(stored: dict, tmp_path: Path, values: dict, phrase: str) -> None:
    space = write_space(tmp_path / "s.yaml", **values)
    assert phrase in bad_sweep(stored, "--space", space)


@pytest.mark.parametrize("value", ["nan", "inf", "1e300", "-inf", "0.5"])
def test_bad_trial_timeout(stored: dict, value: str) -> None:
    assert "--trial-timeout" in bad_sweep(stored, "--trial-timeout", value)


def test_report_output_into_missing_folder_or_onto_a_folder(stored: dict) -> None:
    root = stored["root"]
    before = digest_tree(root)
    for target, phrase in ((root / "no" / "such" / "r.md", "does not exist"),
                           (root, "is a directory")):
        proc = tuner("report", "--results", root / "results", "--format", "md", "-o", target)
        assert proc.returncode == 2, proc.stderr
        assert phrase in one_line_error(proc)
    assert digest_tree(root) == before


# -- 8. bare tuner, Ctrl-C, SIGTERM --------------------------------------------------------------
def test_bare_tuner_prints_usage() -> None:
    proc = tuner()
    assert proc.returncode == 0
    assert proc.stdout.startswith("Usage: tuner") and "Commands:" in proc.stdout
    assert "error" not in proc.stderr


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_mid_trial_says_how_to_resume(sig: int, code: int, tiny_model: Path,
                                                tmp_path: Path) -> None:
    space = write_space(tmp_path / "s.yaml", n_batch=[8, 16, 32], n_ubatch=[8])
    args = ["sweep", "--model", str(tiny_model), "--device", "cpu", "--space", str(space),
            "--prompt-tokens", "32", "--gen-tokens", "2", "--repetitions", "1", "--warmup", "0",
            "--results", str(tmp_path / "results"), "--out", str(tmp_path / "production.yaml"),
            "--study", "h", "--trial-timeout", "120", "--finalist-rounds", "0"]
    env = {**os.environ, **faults.env("hang@measure:n_batch=16")}
    # A user's shell starts the sweep with Ctrl-C's default action; a test runner started in
    # the background of a non-interactive shell has SIGINT ignored, and its children inherit
    # that (Python then installs no KeyboardInterrupt handler): start the sweep as a shell would.
    proc = subprocess.Popen([sys.executable, "-m", "tuner", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    # Until the first trial is stored and the second (the hanging one) is held by this sweep.
    while len(records(tmp_path)) < 1 or State.RUNNING not in states(tmp_path):
        assert time.monotonic() < deadline, "the sweep never held its second trial"
        time.sleep(0.1)
    before = records(tmp_path)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # Ctrl-C reaches the whole process group, workers included
    else:
        os.kill(proc.pid, sig)  # a service manager stops the sweep process
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1] == "interrupted: run the same command to resume"
    assert records(tmp_path) == before and len(before) == 1
    assert State.RUNNING not in states(tmp_path), "the held trial was handed back"
    again = tuner(*args)
    assert again.returncode == 0, again.stderr
    after = records(tmp_path)
    assert_kept(before, after)
    assert len(after) == 3
