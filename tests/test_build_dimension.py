"""Kernel builds as a sweep dimension, without a GPU: builds are folders with a build.json and
a library. Here the installed package's real CPU library stands in for each build (a stand-in,
named so), which is enough to show builds swept side by side, each worker loading its own
folder through LLAMA_CPP_LIB_PATH, and a library that is not the build asked for failing
verification with the reason."""

from __future__ import annotations

import os
from pathlib import Path

from tests.cli_run import tuner
from tests.spaces import write_space
from tests.test_builds import write_record
from tuner.builds.catalog import _installed_lib_dir
from tuner.results.studystore import default_storage, records_of


def stand_in_build(builds_dir: Path, name: str, variant: str) -> Path:
    folder = write_record(builds_dir, name, variant=variant)
    os.symlink(_installed_lib_dir(), folder / "lib")  # the real CPU library stands in
    return folder


def sweep(tmp_path: Path, model: Path, builds: list[str]):
    space = write_space(tmp_path / "space.yaml", builds=builds, n_batch=[16, 32], n_ubatch=[16])
    proc = tuner("sweep", "--model", model, "--device", "cpu", "--space", space,
                 "--prompt-tokens", 32, "--gen-tokens", 4, "--repetitions", 1, "--study", "b",
                 "--builds", tmp_path / "builds", "--results", tmp_path / "results",
                 "--out", tmp_path / "production.yaml", "--finalist-rounds", 0)
    return proc, records_of(default_storage(tmp_path / "results"), "b")


def test_builds_are_swept_side_by_side(tiny_model: Path, tmp_path: Path) -> None:
    stand_in_build(tmp_path / "builds", "cpu-copy", "cpu")
    proc, records = sweep(tmp_path, tiny_model, ["installed", "cpu-copy"])
    assert proc.returncode == 0, proc.stderr
    assert sorted(r.spec.model.build for r in records) == ["cpu-copy", "cpu-copy",
                                                            "installed", "installed"]
    assert all(r.usable for r in records)
    copy = next(r for r in records if r.spec.model.build == "cpu-copy")
    assert copy.environment.build_lib_dir == str(tmp_path / "builds" / "cpu-copy" / "lib")
    assert "build cpu" in copy.verification.summary
    inst = next(r for r in records if r.spec.model.build == "installed")
    assert inst.environment.build_lib_dir is None


def test_library_other_than_the_build_asked_for_fails_verification(tiny_model: Path,
                                                                    tmp_path: Path) -> None:
    stand_in_build(tmp_path / "builds", "fake-cublas", "force-cublas")
    proc, records = sweep(tmp_path, tiny_model, ["fake-cublas"])
    assert proc.returncode == 3, proc.stderr
    assert "no production config written" in proc.stdout
    assert len(records) == 2
    for r in records:
        assert r.state.value == "complete" and not r.verification.verified
        assert any("force-cublas" in why and "cpu" in why for why in r.verification.reasons)
    assert not (tmp_path / "production.yaml").exists()
