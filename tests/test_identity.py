"""A study's identity in its storage (tuner/search/planner.py check_identity): model, device, workload
and, on CUDA, the GPU model and driver. Trials are compared only on one GPU model and driver: a
sweep on another GPU runs the study's sibling for that GPU (`<study>--<gpu>-<driver>`), which
the report shows beside it; a study made before the GPU was part of the identity takes the
first sweep's. A sweep on CUDA cannot run here: the routing is tested on the planner and the
report on stored records."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.records_factory import make_record, sample_environment, store_records
from tuner.errors import BadInput
from tuner.reports.studydata import studies_to_show
from tuner.search.planner import Planner, gpu_study_name
from tuner.sweep.environment import gpu_in_use

BASE = {"model_sha256": "0" * 64, "device": "cuda", "workload": [2048, 128, 2176]}
H100 = "NVIDIA H100 80GB HBM3, driver 580.159.04"
A100 = "NVIDIA A100-SXM4-80GB, driver 580.159.04"


def planner(tmp_path: Path) -> Planner:
    return Planner("s", f"sqlite:///{tmp_path / 'optuna.db'}")


def test_another_gpu_is_refused_with_the_study_to_use(tmp_path: Path) -> None:
    p = planner(tmp_path)
    p.check_identity({**BASE, "gpu": H100})
    p.check_identity({**BASE, "gpu": H100})  # the same GPU again: fine
    with pytest.raises(BadInput, match="holds trials of NVIDIA H100 80GB HBM3") as e:
        p.check_identity({**BASE, "gpu": A100})
    assert e.value.hint == "give this GPU its own study, e.g. --study s-a100"
    with pytest.raises(BadInput, match="another model, device or workload"):
        p.check_identity({**BASE, "workload": [512, 128, 640], "gpu": H100})


def test_a_study_from_before_the_gpu_takes_this_sweeps(tmp_path: Path) -> None:
    p = planner(tmp_path)
    p.study.set_user_attr("tuner_identity", BASE)  # as an older tuner stored it
    p.check_identity({**BASE, "gpu": H100})
    assert p.study.user_attrs["tuner_identity"]["gpu"] == H100
    with pytest.raises(BadInput, match="holds trials of"):
        planner(tmp_path).check_identity({**BASE, "gpu": A100})


def test_the_gpu_in_use_follows_cuda_visible_devices() -> None:
    env = sample_environment().model_copy(update={"gpus": [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3"}, {"index": 1, "name": "NVIDIA A100"}]})
    assert gpu_in_use(env) == "NVIDIA H100 80GB HBM3, driver 550.00"
    assert gpu_in_use(env.model_copy(update={"cuda_visible_devices": "1"})) == (
        "NVIDIA A100, driver 550.00")
    assert gpu_in_use(sample_environment(device="cpu")) is None


def test_another_gpus_sweep_goes_to_the_studys_sibling(tmp_path: Path) -> None:
    p = planner(tmp_path)
    assert p.study_for_gpu(H100) is None  # a new study: it takes the first GPU
    p.check_identity({**BASE, "gpu": H100})
    assert p.study_for_gpu(H100) is None and p.study_for_gpu(None) is None
    sibling = p.study_for_gpu(A100)
    assert sibling == "s--a100-sxm4-80gb-580.159.04" == gpu_study_name("s", A100)
    other = Planner(sibling, f"sqlite:///{tmp_path / 'optuna.db'}")
    other.check_identity({**BASE, "gpu": A100})  # the sibling holds the A100's trials
    assert other.study_for_gpu(A100) is None
    other.close()
    # The same GPU with another driver is another sibling.
    assert p.study_for_gpu(H100.replace("580.159.04", "550.54.15")) == (
        "s--h100-80gb-hbm3-550.54.15")
    assert len(gpu_study_name("x" * 98, A100)) == 100


def test_the_report_of_a_study_shows_its_gpu_siblings_apart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    store_records(url, "s", [make_record(0, study="s")])
    store_records(url, gpu_study_name("s", A100), [make_record(0, study="s2", n_batch=1024)])
    store_records(url, "s-other", [make_record(0, study="s-other")])
    shown = [d.name for d in studies_to_show(url, "s")]
    assert shown == ["s", "s--a100-sxm4-80gb-580.159.04"]  # not s-other: another study
