"""Search spaces: YAML presets, the grid's validity rules and its order."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner.errors import BadInput
from tuner.search.space import BASELINE, Space, default_space, grid, load_space
from tuner.specs import Workload

PRESETS = Path(__file__).resolve().parent.parent / "configs" / "spaces"
ALL_FA = lambda b, k, v: True  # noqa: E731
ONLY_F16_FA = lambda b, k, v: (k, v) == ("f16", "f16")  # noqa: E731


def test_cuda_preset_is_the_built_in_space() -> None:
    assert load_space(PRESETS / "cuda.yaml") == default_space("cuda", ["installed"])


def test_cpu_preset_matches_the_built_in_space_but_threads() -> None:
    preset = load_space(PRESETS / "cpu.yaml")
    built_in = default_space("cpu", ["installed"])
    assert preset.model_copy(update={"n_threads": built_in.n_threads}) == built_in


def test_grid_rules() -> None:
    space = Space(n_batch=[512, 1024], n_ubatch=[256, 1024], flash_attn=[False, True],
                  kv_cache=["f16/f16", "q8_0/q8_0"])
    specs = grid(space, "cuda", Workload(prompt_tokens=2048, gen_tokens=128), ALL_FA)
    for s in specs:
        c = s.context
        assert c.n_ubatch <= c.n_batch
        assert c.flash_attn or c.type_v == "f16"
    # (512,256) (1024,256) (1024,1024) x {nofa f16, fa f16, fa q8_0}
    assert len(specs) == 9
    only = grid(space, "cuda", Workload(prompt_tokens=2048, gen_tokens=128), ONLY_F16_FA)
    assert not any(s.context.type_k == "q8_0" for s in only), "no kernels, not offered"


def test_baseline_first_and_batches_beyond_the_prompt_kept_once() -> None:
    space = Space(n_batch=[256, 512, 1024], n_ubatch=[256, 512], flash_attn=[True, False])
    specs = grid(space, "cuda", Workload(prompt_tokens=512, gen_tokens=16), ALL_FA)
    assert specs[0].context == BASELINE
    eff = [(min(s.context.n_batch, 512), s.context.n_ubatch, s.context.flash_attn)
           for s in specs]
    assert len(eff) == len(set(eff)), "n_batch 1024 computes what 512 does for 512 tokens"
    assert not any(s.context.n_batch == 1024 for s in specs)


def test_batches_beyond_the_prompt_keep_the_smallest_even_listed_last() -> None:
    # The partial-offload space lists n_ubatch 512 first; a prompt of 32 tokens computes the
    # same at every n_ubatch, and the one kept is the smallest (the least compute buffer,
    # which the memory plan counts), in the place of the first listed.
    space = Space(n_gpu_layers=[-1], n_batch=[2048], n_ubatch=[512, 1024, 256],
                  flash_attn=[True])
    specs = grid(space, "cuda", Workload(prompt_tokens=32, gen_tokens=8), ALL_FA)
    assert [(s.context.n_batch, s.context.n_ubatch) for s in specs] == [(2048, 256)]
    # 400 tokens: 512 and 1024 compute them in one piece (512 kept), 256 in two.
    wide = grid(space, "cuda", Workload(prompt_tokens=400, gen_tokens=8), ALL_FA)
    assert [s.context.n_ubatch for s in wide] == [512, 256]


@pytest.mark.parametrize("text, phrase", [
    ("kv_cache: [f16]", "must be 'K/V'"),
    ("kv_cache: [q3_x/q3_x]", "unknown KV cache type"),
    ("n_batch: [0]", "0 is outside the range of n_batch: 1 to 2147483647"),
    ("n_batches: [512]", "n_batches"),
    ("[1, 2]", "mapping"),
])
def test_bad_space_files(tmp_path: Path, text: str, phrase: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(BadInput, match=phrase.replace("[", r"\[")):
        load_space(path)


@pytest.mark.parametrize(("cpus", "physical", "expected"), [
    (16, 8, [8, 16]),  # hyper-threads: llama.cpp's one per core first, then every CPU
    (16, 16, [16, 8]),  # no hyper-threads: every core first, then half
    (2, 2, [2, 1]),
    (1, 1, [1]),
])
def test_thread_counts_start_at_llama_cpps_default(cpus: int, physical: int,
                                                   expected: list[int],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The first trials of a space with a host share run at the thread count a trial without
    one runs (one per physical core), the others searched after."""
    from tuner.search import space as space_mod

    monkeypatch.setattr(space_mod.os, "cpu_count", lambda: cpus)
    monkeypatch.setattr(space_mod, "default_threads", lambda: physical)
    assert space_mod.thread_counts() == expected
    built = space_mod.default_space("cuda", ["installed"], (20, 18))
    assert built.n_threads == expected and built.n_gpu_layers == [20, 18]
