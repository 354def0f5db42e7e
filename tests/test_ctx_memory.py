"""An n_ctx whose KV cache the machine cannot hold is refused before any trial
(tuner/search/ctxmemory.py), through the real CLI on a real GGUF whose trained context is
large. The host's (and GPU's) memory is a FAKE reading, so the bound is the same everywhere."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.cli_run import one_line_error, tuner
from tests.spaces import write_space
from tuner.models import memplan
from tuner.models.modelgen import SHAPES, write_llama
from tuner.search import ctxmemory, offload
from tuner.worker import gpumem

ROOM_MIB = 1024  # the FAKE memory there is


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, trained (by its header) for 8M tokens."""
    shape = {**SHAPES["tiny"], "context_length": 1 << 23}
    return write_llama(tmp_path_factory.mktemp("long") / "long.gguf", **shape)


def bound(model: Path, kv: str) -> int:
    """The largest n_ctx whose KV cache at ``kv`` fits in ROOM_MIB (a multiple of 256)."""
    layout = memplan.read_layout(model)
    cells = ROOM_MIB * memplan.MIB // ctxmemory.kv_bytes(layout, memplan.CTX_PAD, kv) \
        * memplan.CTX_PAD
    assert ctxmemory.kv_bytes(layout, cells, kv) <= ROOM_MIB * memplan.MIB
    assert ctxmemory.kv_bytes(layout, cells + 1, kv) > ROOM_MIB * memplan.MIB
    return cells


def sweep(model: Path, root: Path, n_ctx: int, *extra: object,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return tuner("sweep", "--model", model, "--device", "cpu", "--prompt-tokens", 32,
                 "--gen-tokens", 8, "--n-ctx", n_ctx, "--repetitions", 1,
                 "--results", root / "results", "--out", root / "production.yaml", *extra,
                 env=env or {offload.FAKE_HOST_ENV: str(ROOM_MIB)})


def refused(proc: subprocess.CompletedProcess, root: Path) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert not (root / "results").exists() and not (root / "production.yaml").exists()
    return one_line_error(proc)


def test_a_context_beyond_memory_is_refused_before_any_trial(long_model: Path,
                                                             tmp_path: Path) -> None:
    n = bound(long_model, "q8_0/q8_0") + 1  # the default space's smallest cache: q8_0
    line = refused(sweep(long_model, tmp_path, n), tmp_path)
    need = ctxmemory.kv_bytes(memplan.read_layout(long_model), n, "q8_0/q8_0") / memplan.MIB
    assert (f"n_ctx {n} needs a KV cache of {need:,.0f} MiB (kv q8_0/q8_0, the smallest the "
            f"search could pick), above the {ROOM_MIB:,} MiB that could hold it") in line


def test_a_context_just_under_the_bound_is_not_refused(long_model: Path,
                                                        tmp_path: Path) -> None:
    """At the bound the sweep goes on: the bad study name checked next is what stops it."""
    line = refused(sweep(long_model, tmp_path, bound(long_model, "q8_0/q8_0"),
                         "--study", "no/such"), tmp_path)
    assert "study name 'no/such'" in line and "KV cache" not in line


def test_the_smallest_cache_of_the_space_sets_the_bound(long_model: Path,
                                                         tmp_path: Path) -> None:
    """A space of f16 caches only: the q8_0 bound is above what f16 can hold."""
    space = write_space(tmp_path / "space.yaml")
    n = bound(long_model, "q8_0/q8_0")
    assert bound(long_model, "f16/f16") < n
    line = refused(sweep(long_model, tmp_path, n, "--space", space), tmp_path)
    assert f"n_ctx {n} needs a KV cache" in line and "(kv f16/f16" in line


def test_a_cuda_sweep_counts_the_gpu_free_memory(long_model: Path, tmp_path: Path) -> None:
    """Host and GPU together: half of the room each (FAKE readings); one token more is refused."""
    half = str(ROOM_MIB // 2)
    env = {offload.FAKE_HOST_ENV: half, gpumem.FAKE_FREE_ENV: half}
    n = bound(long_model, "q8_0/q8_0")
    line = refused(sweep(long_model, tmp_path, n + 1, "--device", "cuda", env=env), tmp_path)
    assert (f"above the {ROOM_MIB:,} MiB that could hold it (512 MiB of host memory available "
            "+ 512 MiB of GPU memory free)") in line
    line = refused(sweep(long_model, tmp_path, n, "--device", "cuda", "--study", "no/such",
                         env=env), tmp_path)
    assert "KV cache" not in line


def test_no_reading_no_verdict(long_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA sweep on a machine without a GPU reading (this one) gets no verdict, however
    little host memory there is."""
    if gpumem.free_mib(0) is not None:
        pytest.skip("this machine reads a GPU's free memory")
    monkeypatch.setenv(offload.FAKE_HOST_ENV, "1")
    ctxmemory.check_context_memory(memplan.read_layout(long_model), 1 << 23, ["f16/f16"], "cuda", None)
    with pytest.raises(ctxmemory.BadInput, match="needs a KV cache"):
        ctxmemory.check_context_memory(memplan.read_layout(long_model), 1 << 23, ["f16/f16"], "cpu", None)
