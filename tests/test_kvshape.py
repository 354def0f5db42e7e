"""tuner/models/kvshape.py's rules for headers no small file of tuner/models/archgen.py loads
(gemma4's shared caches and per-layer sliding widths, hybrids that mark their recurrent
layers by a 0 KV head count or by a list, LFM2's short convolutions): each against the vendored
llama.cpp's rule it cites. The loaded architectures (gemma3, deepseek2 with MLA, qwen35) are
checked against real CPU loads in tests/test_memplan.py."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tuner.models.kvshape import cache_shape
from tuner.models.memplan import read_layout
from tuner.models.modelgen import write_model

if TYPE_CHECKING:
    import gguf


def test_shared_kv_layers_and_sliding_widths_gemma4() -> None:
    """gemma4.cpp: n_layer_kv_from_start = n_layer - shared_kv_layers; a sliding layer's head
    width is key_length_swa (llama_hparams::n_embd_head_k(il)), listed by the pattern array."""
    values: dict[str, object] = {
        "gemma4.attention.sliding_window": 512,
        "gemma4.attention.sliding_window_pattern": [True, True, False, True, True, False],
        "gemma4.attention.shared_kv_layers": 2,
        "gemma4.attention.key_length_swa": 256, "gemma4.attention.value_length_swa": 256}
    c = cache_shape(values, "gemma4", 6, 1024, (2,) * 6, 512, 512, n_head=8)
    assert c.k_width == c.v_width == (512, 512, 1024, 512, 0, 0)
    assert c.v_width_max == 1024 and c.sliding and all(c.loaded)
    assert c.state_bytes == (0,) * 6


def test_zero_head_hybrid_keeps_a_state_per_recurrent_layer() -> None:
    """jamba.cpp / granite-hybrid.cpp: a layer with 0 KV heads is recurrent; its state is
    (d_conv - 1) x (d_inner + 2 n_group d_state) + d_state x d_inner f32 values."""
    values: dict[str, object] = {
        "granitehybrid.ssm.conv_kernel": 4, "granitehybrid.ssm.inner_size": 512,
        "granitehybrid.ssm.state_size": 16, "granitehybrid.ssm.group_count": 1}
    c = cache_shape(values, "granitehybrid", 4, 256, (0, 0, 0, 4), 64, 64, n_head=8)
    state = 4 * (3 * (512 + 2 * 16) + 16 * 512)
    assert c.state_bytes == (state, state, state, 0)
    assert c.k_width == c.v_width == (0, 0, 0, 256)


def test_a_listed_recurrent_layer_has_no_cache_and_prediction_layers_are_skipped() -> None:
    """qwen35.cpp reads attention.recurrent_layers before full_attention_interval; an MTP
    layer (nextn_predict_layers) is neither loaded (load_mtp off) nor cached."""
    values: dict[str, object] = {
        "qwen35.attention.recurrent_layers": [True, False, True, False, False],
        "qwen35.nextn_predict_layers": 1,
        "qwen35.ssm.conv_kernel": 4, "qwen35.ssm.inner_size": 128,
        "qwen35.ssm.state_size": 32, "qwen35.ssm.group_count": 2}
    c = cache_shape(values, "qwen35", 5, 256, (2,) * 5, 64, 64, n_head=8)
    assert c.k_width == (0, 128, 0, 128, 0)
    assert c.loaded == (True, True, True, True, False)
    assert [bool(s) for s in c.state_bytes] == [True, False, True, False, False]


def test_interval_default_without_the_key() -> None:
    """qwen3next.cpp: full_attention_interval defaults to 4."""
    c = cache_shape({}, "qwen3next", 8, 256, (2,) * 8, 64, 64, n_head=8)
    assert [bool(k) for k in c.k_width] == [False, False, False, True] * 2


def test_lfm2_short_convolution_state() -> None:
    """lfm2.cpp: 0 KV heads mark a convolution layer; llama_hparams::n_embd_r is
    n_embd x (l_cache - 1), n_embd_s 0."""
    c = cache_shape({"lfm2.shortconv.l_cache": 3}, "lfm2", 3, 1024, (0, 8, 0), 64, 64,
                    n_head=8)
    assert c.state_bytes == (4 * 1024 * 2, 0, 4 * 1024 * 2)
    assert c.k_width == (0, 512, 0)


def test_plain_llama_header_every_layer_cached() -> None:
    c = cache_shape({}, "llama", 3, 256, (2, 2, 2), 64, 64, n_head=8)
    assert c.k_width == c.v_width == (128,) * 3
    assert c.state_bytes == (0,) * 3 and all(c.loaded) and not c.sliding


def test_bool_arrays_are_read_from_a_real_header(tmp_path: Path) -> None:
    """The header reader keeps the per-layer bool arrays the rules read."""
    def keys(w: gguf.GGUFWriter) -> None:
        w.add_block_count(3)
        w.add_embedding_length(256)
        w.add_head_count(4)
        w.add_head_count_kv(2)
        w.add_array("llama.attention.recurrent_layers", [True, False, True])

    path = write_model(tmp_path / "arr.gguf", "llama", keys, [("token_embd.weight", (600, 256))],
                       n_vocab=600, sparse=True)
    assert read_layout(path).cache.k_width == (0, 128, 0)
