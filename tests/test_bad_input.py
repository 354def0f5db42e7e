"""Bad input through the real CLI: each case ends with exit 2 and one readable line, no
traceback, and the results and production config already stored stay byte for byte intact."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_run import digest_tree, one_line_error, tuner
from tests.malformed_corpus import PROBLEMS, run_unprivileged_prefix
from tests.spaces import write_space


def bad_sweep(stored: dict, *args: object, model: object = None, prefix=None):
    root = stored["root"]
    before = digest_tree(root)
    proc = tuner("sweep", "--model", model if model is not None else stored["model"],
                 "--device", "cpu", "--results", root / "results", "--study", "kept",
                 "--prompt-tokens", 32, "--gen-tokens", 4,
                 "--out", root / "configs" / "production.yaml", *args, prefix=prefix,
                 env={"PYTHONNOUSERSITE": "1"})
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    line = one_line_error(proc)
    assert digest_tree(root) == before, "stored results or config changed"
    return line


def test_missing_model(stored: dict, tmp_path: Path) -> None:
    assert "not found" in bad_sweep(stored, model=tmp_path / "nope.gguf")


def test_directory_as_model(stored: dict, tmp_path: Path) -> None:
    assert "directory" in bad_sweep(stored, model=tmp_path)


def test_empty_file(stored: dict, tmp_path: Path) -> None:
    (tmp_path / "empty.gguf").write_bytes(b"")
    assert "empty" in bad_sweep(stored, model=tmp_path / "empty.gguf")


def test_not_gguf(stored: dict, tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_text("this is a text file, not a model\n")
    assert "not a GGUF file" in bad_sweep(stored, model=tmp_path / "model.gguf")


def test_truncated_gguf(stored: dict, tmp_path: Path) -> None:
    data = stored["model"].read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    assert "truncated" in bad_sweep(stored, model=tmp_path / "cut.gguf")


@pytest.mark.parametrize("case", sorted(PROBLEMS))
def test_malformed_corpus(case: str, stored: dict, malformed_models: dict[str, Path]) -> None:
    prefix = run_unprivileged_prefix() if case == "no_read_permission" else None
    line = bad_sweep(stored, model=malformed_models[case], prefix=prefix)
    assert PROBLEMS[case] in line, line


def test_n_ubatch_above_n_batch(stored: dict, tmp_path: Path) -> None:
    space = write_space(tmp_path / "s.yaml", n_batch=[64], n_ubatch=[128])
    assert "no valid combination" in bad_sweep(stored, "--space", space)


def test_unknown_kv_type(stored: dict, tmp_path: Path) -> None:
    space = write_space(tmp_path / "s.yaml", kv_cache=["q9_9/q9_9"])
    assert "unknown KV cache type 'q9_9'" in bad_sweep(stored, "--space", space)


@pytest.mark.parametrize("args, phrase", [
    (["--prompt-tokens", "-5"], "--prompt-tokens"),
    (["--n-ctx", "16", "--prompt-tokens", "64"], "do not fit in n_ctx 16"),
    (["--gen-tokens", "8"], "workload"),
    (["--prompt-tokens", "0", "--gen-tokens", "0"], "needs prompt or generated tokens"),
    (["--device", "tpu"], "--device"),
    (["--trials", "0"], "--trials"),
    (["--study", "../escape"], "study name"),
    (["--space", "/nonexistent/space.yaml"], "not found"),
    (["--frobnicate"], "No such option"),
])
def test_bad_options(stored: dict, args: list[str], phrase: str) -> None:
    assert phrase in bad_sweep(stored, *args)


def test_unwritable_production_config_path_is_refused_before_any_trial(stored: dict) -> None:
    root = stored["root"]
    assert "is a directory" in bad_sweep(stored, "--out", root)
    assert "must end in .yaml" in bad_sweep(stored, "--out", root / "production.json")
    (root / "afile").write_text("x")
    try:
        assert "not a directory" in bad_sweep(stored, "--out", root / "afile" / "p.yaml")
    finally:
        (root / "afile").unlink()


def test_space_that_is_not_yaml_mapping(stored: dict, tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("- just\n- a list\n")
    assert "mapping" in bad_sweep(stored, "--space", tmp_path / "s.yaml")
    (tmp_path / "t.yaml").write_text("n_batch: [64\n")
    assert "not readable YAML" in bad_sweep(stored, "--space", tmp_path / "t.yaml")
    (tmp_path / "u.yaml").write_text("n_bacth: [64]\n")
    assert "n_bacth" in bad_sweep(stored, "--space", tmp_path / "u.yaml")


def test_report_of_missing_study_and_bad_format(stored: dict) -> None:
    root = stored["root"]
    missing = tuner("report", "--results", root / "results", "--study", "nope")
    assert missing.returncode == 2 and "no study 'nope'" in one_line_error(missing)
    fmt = tuner("report", "--results", root / "results", "--format", "xml")
    assert fmt.returncode == 2 and "--format" in one_line_error(fmt)
    empty = tuner("report", "--results", root / "nothing-here")
    assert empty.returncode == 2 and "no sweep results" in one_line_error(empty)
