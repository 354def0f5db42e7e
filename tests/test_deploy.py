"""A deployment that works from any directory: absolute library and model paths even when the
sweep ran with relative ones, the service's environment file, the command that recreates the
build, raw and served figures named, rollback. The record is TEST DATA (records_factory); the
config is validated by the real server settings with a real library."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.records_factory import make_record
from tests.test_builds import write_record
from tuner.builds.catalog import _installed_lib_dir
from tuner.deploy.prodconfig import write_production
from tuner.deploy.service import RAW_KIND, SERVED_KIND, read_env_file
from tuner.results.records import ServedFigures, Stat


def test_relative_paths_become_absolute_with_env_file_and_rebuild(
        tmp_path: Path, smollm2_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A `tuner build` output (the installed CPU library stands in for a CUDA build's).
    folder = write_record(tmp_path / "builds", "force-cublas", variant="force-cublas",
                          cuda_arch="90")
    shutil.copytree(_installed_lib_dir(), folder / "lib")
    monkeypatch.chdir(tmp_path)  # the sweep ran here, with paths relative to it
    record = make_record(3, build="force-cublas", cuda_graphs=False, request_s=1.0,
                         model_path=str(smollm2_path))
    served = ServedFigures(source="worker", requests=3, prompt_tokens=256, gen_tokens=64,
                           ttft_s=Stat.of([0.06, 0.065, 0.07]), gen_tps=Stat.of([70, 75, 80]),
                           request_s=Stat.of([0.9, 0.92, 0.95]))
    written = write_production(record, Path("configs/production.yaml"),
                               model_path=str(smollm2_path), results_dir=Path("results"),
                               build_lib_dir="builds/force-cublas/lib",
                               env={"LLAMA_CPP_LIB_PATH": "builds/force-cublas/lib"},
                               served=served)
    lib = str(tmp_path / "builds" / "force-cublas" / "lib")
    side = json.loads(written.sidecar.read_text())
    assert side["build"] == {"name": "force-cublas", "lib_dir": lib,
                             "rebuild": "tuner build --variant force-cublas --cuda-arch 90"}
    assert side["env"]["LLAMA_CPP_LIB_PATH"] == lib
    assert written.env_file == tmp_path / "configs" / "production.env"
    assert read_env_file(written.env_file) == {"GGML_CUDA_DISABLE_GRAPHS": "1",
                                               "LLAMA_CPP_LIB_PATH": lib}
    config = yaml.safe_load(written.path.read_text())
    assert os.path.isabs(config["models"][0]["model"])
    assert side["figures"]["kind"] == RAW_KIND and side["served"]["kind"] == SERVED_KIND
    assert side["served"]["gen_tps"]["median"] == 75
    gap = side["served_vs_raw"]
    m = record.measurement
    assert gap["raw_gen_tps"] == pytest.approx(m.tg_tps.median)
    assert gap["gen_change"] == pytest.approx((75 - m.tg_tps.median) / m.tg_tps.median)
    assert gap["raw_ttft_s"] == pytest.approx(256 / m.pp_tps.median)
    assert side["verify"] == f"tuner verify {tmp_path / 'configs' / 'production.yaml'}"
    # Rolling back restores all three files, then verifies.
    for name in ("production.yaml", "production.tuner.json", "production.env"):
        target = tmp_path / "configs" / name
        assert f"cp {target}.bak {target}" in side["rollback"]
    assert side["rollback"].endswith(side["verify"])
