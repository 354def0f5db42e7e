"""Generated models are real: they pass the check, llama-cpp-python loads them and decodes
finite, varied logits, and llama.cpp quantizes them. llama_cpp runs only in subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tuner.errors import BadInput
from tuner.models.modelcheck import check_model
from tuner.models.modelgen import SHAPES, vocabulary, write_llama

REPO = Path(__file__).resolve().parent.parent
TEXT = "hello world, abc"

# Loads each model on the CPU, tokenizes TEXT, decodes it and one more token, and reports.
PROBE = r"""
import ctypes, json, math, sys
import llama_cpp as L
L.llama_backend_init()
out = {}
for path in sys.argv[2:]:
    mp = L.llama_model_default_params()
    mp.n_gpu_layers = 0
    model = L.llama_model_load_from_file(path.encode(), mp)
    if not model:
        out[path] = {"loaded": False}
        continue
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_threads, cp.n_threads_batch = 128, 64, 2, 2
    ctx = L.llama_init_from_model(model, cp)
    text = sys.argv[1].encode()
    toks = (L.llama_token * 64)()
    n = L.llama_tokenize(vocab, text, len(text), toks, 64, True, False)
    buf = ctypes.create_string_buffer(256)
    m = L.llama_detokenize(vocab, toks, n, buf, 256, True, False)
    rc = [L.llama_decode(ctx, L.llama_batch_get_one(toks, n))]
    row = L.llama_get_logits_ith(ctx, -1)
    first = [row[i] for i in range(n_vocab)]
    nxt = (L.llama_token * 1)(max(range(n_vocab), key=first.__getitem__))
    rc.append(L.llama_decode(ctx, L.llama_batch_get_one(nxt, 1)))
    row = L.llama_get_logits_ith(ctx, -1)
    second = [row[i] for i in range(n_vocab)]
    out[path] = {"loaded": True, "n_vocab": n_vocab, "tokens": list(toks[:n]), "rc": rc,
                 "text": buf.raw[:m].decode(), "finite": all(map(math.isfinite, first + second)),
                 "spread": max(first) - min(first)}
    L.llama_free(ctx)
    L.llama_model_free(model)
print(json.dumps(out))
"""


def run_python(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def probe(*models: Path) -> dict[str, dict]:
    done = run_python("-c", PROBE, TEXT, *map(str, models))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_decodes(result: dict, n_vocab: int) -> None:
    assert result["loaded"] and result["n_vocab"] == n_vocab
    assert result["rc"] == [0, 0]
    assert result["tokens"][0] == 1 and len(result["tokens"]) > 3  # BOS, then the text
    assert result["text"].strip() == TEXT  # the SPM vocabulary round-trips text
    assert result["finite"] and result["spread"] > 1e-3  # real, varied logits


def test_vocabulary_is_spm_shaped() -> None:
    tokens, scores, types = vocabulary(1000)
    assert len(tokens) == len(scores) == len(types) == 1000
    assert len(set(tokens)) == 1000
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and types[:3] == [2, 3, 3]
    assert tokens[3 + 0x0A] == "<0x0A>" and types[3:259] == [6] * 256
    assert "\u2581" in tokens and "\u2581a" in tokens and set(types[259:]) == {1}
    with pytest.raises(BadInput):
        vocabulary(100)


def test_tiny_model_passes_the_check(tiny_model: Path) -> None:
    info = check_model(tiny_model)
    assert (info.architecture, info.n_layers, info.context_length) == ("llama", 2, 2048)
    assert info.file_type == 1 and info.n_tensors == 2 + 9 * 2 + 1
    assert info.data_offset + info.data_bytes <= info.size_bytes < 4 * 2**20


def test_tiny_model_loads_and_decodes_in_llama_cpp(tiny_model: Path) -> None:
    assert_decodes(probe(tiny_model)[str(tiny_model)], SHAPES["tiny"]["n_vocab"])


def test_quantized_models_are_smaller_and_still_decode(tiny_model: Path, tmp_path: Path) -> None:
    outputs = {"q4_0": (tmp_path / "tiny-q4_0.gguf", 2),  # (path, LLAMA_FTYPE_MOSTLY_*)
               "q4_k_m": (tmp_path / "tiny-q4_k_m.gguf", 15)}
    script = ("import sys\nfrom tuner.models.modelgen import quantize\n"
              "for ftype, dst in zip(sys.argv[2::2], sys.argv[3::2]):\n"
              "    quantize(sys.argv[1], dst, ftype)\n")
    pairs = [x for ftype, (dst, _) in outputs.items() for x in (ftype, str(dst))]
    done = run_python("-c", script, str(tiny_model), *pairs)
    assert done.returncode == 0, done.stderr[-3000:]
    f16_size = tiny_model.stat().st_size
    for dst, file_type in outputs.values():
        info = check_model(dst)
        assert info.file_type == file_type
        assert info.size_bytes < 0.5 * f16_size
    results = probe(*(dst for dst, _ in outputs.values()))
    for dst, _ in outputs.values():
        assert_decodes(results[str(dst)], SHAPES["tiny"]["n_vocab"])


def test_command_line_writes_quantizes_and_cleans_up(tmp_path: Path) -> None:
    kept, dropped = tmp_path / "kept-q8_0.gguf", tmp_path / "dropped-q8_0.gguf"
    done = run_python("-m", "tuner.models.modelgen", "--shape", "tiny", "--quant", "q8_0",
                      "--out", str(kept), "--keep-f16")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wrote" in done.stdout and "quantized" in done.stdout
    assert check_model(kept).file_type == 7  # MOSTLY_Q8_0
    assert check_model(tmp_path / "kept-q8_0.f16.gguf").file_type == 1
    done = run_python("-m", "tuner.models.modelgen", "--quant", "q8_0", "--out", str(dropped))
    assert done.returncode == 0, done.stderr[-3000:]
    assert dropped.exists() and not (tmp_path / "dropped-q8_0.f16.gguf").exists()


def test_command_line_unknown_quantization_is_one_line(tmp_path: Path) -> None:
    done = run_python("-m", "tuner.models.modelgen", "--quant", "q9_9", "--out",
                      str(tmp_path / "x.gguf"), "--keep-f16")
    assert done.returncode == 2
    assert done.stderr.startswith("error: unknown quantization 'q9_9'")
    assert "Traceback" not in done.stderr and "q4_k_m" in done.stderr  # the hint lists names
    assert not (tmp_path / "x.f16.gguf").exists()  # refused before writing anything


def test_weights_follow_the_seed(tmp_path: Path) -> None:
    shape = SHAPES["tiny"]
    a = write_llama(tmp_path / "a.gguf", **shape, seed=1).read_bytes()
    b = write_llama(tmp_path / "b.gguf", **shape, seed=1).read_bytes()
    c = write_llama(tmp_path / "c.gguf", **shape, seed=2).read_bytes()
    assert a == b and a != c and len(a) == len(c)


def test_bad_shapes_are_refused(tmp_path: Path) -> None:
    shape = SHAPES["tiny"]
    with pytest.raises(BadInput):
        write_llama(tmp_path / "x.gguf", **shape, dtype="q4_0")
    with pytest.raises(BadInput):
        write_llama(tmp_path / "x.gguf", **{**shape, "n_head": 3})


def test_writing_and_checking_a_model_never_imports_llama_cpp(tmp_path: Path) -> None:
    """In a fresh interpreter, so the answer does not depend on what other tests of this
    session imported before."""
    code = ("import sys; from pathlib import Path; "
            "from tuner.models.modelgen import SHAPES, write_llama; "
            "from tuner.models.modelcheck import check_model; "
            f"p = write_llama(Path({str(tmp_path / 'm.gguf')!r}), **SHAPES['tiny']); "
            "check_model(p); print('llama_cpp imported:', 'llama_cpp' in sys.modules)")
    done = run_python("-c", code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "llama_cpp imported: False"
    assert (tmp_path / "m.gguf").stat().st_size > 0
