"""Write real GGUF models with random weights and a real model's shape.

The speed of a dense model depends on its shapes and tensor types, not on the values of its
weights, so a llama-architecture file of the right shape, with a working SentencePiece vocabulary
and small random weights, benchmarks like the real thing without downloading it. Files are
streamed tensor by tensor, so an 8B model never sits in memory whole.

    python -m tuner.models.modelgen --shape llama3-8b --quant q4_k_m --out /tmp/llama3-8b-q4_k_m.gguf
"""

from __future__ import annotations

import argparse
import itertools
import os
import string
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np

from tuner.errors import BadInput, TunerError

if TYPE_CHECKING:
    import gguf


class Shape(TypedDict):
    """The dimensions write_llama takes, by keyword."""
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    context_length: int


SHAPES: dict[str, Shape] = {
    # Row sizes (n_embd, n_ff) are multiples of 256, so k-quants apply to every matrix.
    "tiny": Shape(n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_vocab=512,
                  context_length=2048),
    "llama3-8b": Shape(n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336,
                       n_vocab=128256, context_length=8192),
    # Qwen2.5's 1.5B and 7B dimensions written as llama-architecture models (a 12:2 and a 28:4
    # grouped-query attention, 151k-token vocabularies): shapes unlike the Llama ones above.
    "qwen2.5-1.5b": Shape(n_layer=28, n_embd=1536, n_head=12, n_head_kv=2, n_ff=8960,
                          n_vocab=151936, context_length=32768),
    "qwen2.5-7b": Shape(n_layer=28, n_embd=3584, n_head=28, n_head_kv=4, n_ff=18944,
                        n_vocab=152064, context_length=32768),
    # Llama 3.2 3B: 24:8 grouped-query attention, a 128k-token vocabulary, a narrow FFN.
    "llama3.2-3b": Shape(n_layer=28, n_embd=3072, n_head=24, n_head_kv=8, n_ff=8192,
                         n_vocab=128256, context_length=131072),
    # Qwen2.5 3B (36 layers, 16:2) and Mistral 7B (32 layers, 32:8, a 32k vocabulary, a wide FFN).
    "qwen2.5-3b": Shape(n_layer=36, n_embd=2048, n_head=16, n_head_kv=2, n_ff=11008,
                        n_vocab=151936, context_length=32768),
    "mistral-7b": Shape(n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336,
                        n_vocab=32768, context_length=32768),
    "llama2-7b": Shape(n_layer=32, n_embd=4096, n_head=32, n_head_kv=32, n_ff=11008,
                       n_vocab=32000, context_length=4096),
    # DeepSeek LLM 7B: 30 layers, full 32:32 attention, a 102k vocabulary.
    "deepseek-7b": Shape(n_layer=30, n_embd=4096, n_head=32, n_head_kv=32, n_ff=11008,
                         n_vocab=102400, context_length=4096),
    # SmolLM2-1.7B: 24 layers, 2048 wide, full 32:32 attention, a 49k vocabulary.
    "smollm2-1.7b": Shape(n_layer=24, n_embd=2048, n_head=32, n_head_kv=32, n_ff=8192,
                          n_vocab=49152, context_length=8192),
    # InternLM2-1.8B: 24 layers, 2048 wide, 16:8 attention, a 92k vocabulary.
    "internlm2-1.8b": Shape(n_layer=24, n_embd=2048, n_head=16, n_head_kv=8, n_ff=8192,
                            n_vocab=92544, context_length=32768),
    # Qwen3-8B: 36 layers, 4096 wide, 32:8 attention, a 12,288 FFN, a 152k vocabulary.
    "qwen3-8b": Shape(n_layer=36, n_embd=4096, n_head=32, n_head_kv=8, n_ff=12288,
                      n_vocab=151936, context_length=32768),
    # Qwen3-1.7B: 28 layers, 2048 wide, 16:8 attention, a 6,144 FFN, a 152k vocabulary.
    "qwen3-1.7b": Shape(n_layer=28, n_embd=2048, n_head=16, n_head_kv=8, n_ff=6144,
                        n_vocab=151936, context_length=32768),
    # Granite 3.1 8B: 40 layers, 4096 wide, 32:8 attention, a 12,800 FFN, a 49k vocabulary
    # (a 7-8B whose per-token sampling is a third of a 152k vocabulary's).
    "granite3-8b": Shape(n_layer=40, n_embd=4096, n_head=32, n_head_kv=8, n_ff=12800,
                         n_vocab=49155, context_length=131072),
    # Qwen2.5-14B: 48 layers, 5120 wide, 40:8 attention (a 13-14B shape for partial offload).
    "qwen2.5-14b": Shape(n_layer=48, n_embd=5120, n_head=40, n_head_kv=8, n_ff=13824,
                         n_vocab=152064, context_length=32768),
}
DTYPES = {"f32": (np.float32, 0), "f16": (np.float16, 1)}  # numpy type, general.file_type
BLOCK = (1 << 20) + 17  # random values per tile; odd so that rows of a matrix differ
SPECIAL = ["<unk>", "<s>", "</s>"]
# Tensors of more than one dimension that llama.cpp's converters keep in f32 (elementwise
# operands, not matrix multiplies): Mamba's convolution and A (Kimi's Q, K and V convolutions
# too), RWKV's interpolations and bonus.
F32_MATRICES = ("ssm_conv1d.weight", "ssm_conv1d_q.weight", "ssm_conv1d_k.weight",
                "ssm_conv1d_v.weight", ".ssm_a", "_lerp_x.weight", "_lerp_fused.weight",
                "_lerp_k.weight", "_lerp_r.weight", "time_mix_first.weight")


def _pieces() -> Iterator[str]:
    """Word-like SentencePiece pieces: '▁', then 'a', '▁a', ..., 'ab', '▁ab', ... for ever."""
    yield "\u2581"
    for length in itertools.count(1):
        for letters in itertools.product(string.ascii_lowercase, repeat=length):
            word = "".join(letters)
            yield word
            yield "\u2581" + word


def numbered_pieces() -> Iterator[str]:
    """Pieces of an unusual vocabulary: 'p0', 'p1', ... (no word, no space marker), so that
    text tokenizes to byte tokens with a few numbered pieces among them."""
    return (f"p{i}" for i in itertools.count())


def vocabulary(n_vocab: int, pieces: Iterator[str] | None = None,
               ) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of an SPM vocabulary of exactly ``n_vocab`` entries:
    the special tokens, the 256 byte tokens, then ``pieces`` (default: word-like ones)."""
    from gguf.constants import TokenType

    fixed = len(SPECIAL) + 256
    if n_vocab < fixed + 1:
        raise BadInput(f"n_vocab {n_vocab} is too small: a llama vocabulary needs at least "
                       f"{fixed + 1} tokens")
    tokens = SPECIAL + [f"<0x{b:02X}>" for b in range(256)]
    tokens += list(itertools.islice(pieces or _pieces(), n_vocab - fixed))
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    types += [TokenType.NORMAL] * (n_vocab - fixed)
    scores = [0.0] * fixed + [-float(i) for i in range(n_vocab - fixed)]
    return tokens, scores, [int(t) for t in types]


def _tensors(n_layer: int, n_embd: int, n_head: int, n_head_kv: int, n_ff: int,
             n_vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    """Names and numpy shapes (rows, columns) of a llama model's tensors, in file order."""
    kv = n_embd // n_head * n_head_kv
    out: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (n_vocab, n_embd))]
    for i in range(n_layer):
        b = f"blk.{i}"
        out += [(f"{b}.attn_norm.weight", (n_embd,)), (f"{b}.attn_q.weight", (n_embd, n_embd)),
                (f"{b}.attn_k.weight", (kv, n_embd)), (f"{b}.attn_v.weight", (kv, n_embd)),
                (f"{b}.attn_output.weight", (n_embd, n_embd)), (f"{b}.ffn_norm.weight", (n_embd,)),
                (f"{b}.ffn_gate.weight", (n_ff, n_embd)), (f"{b}.ffn_up.weight", (n_ff, n_embd)),
                (f"{b}.ffn_down.weight", (n_embd, n_ff))]
    return out + [("output_norm.weight", (n_embd,)), ("output.weight", (n_vocab, n_embd))]


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """Small normal values (std 0.02): one random tile per tensor, repeated to fill it."""
    n = int(np.prod(shape))
    tile: np.ndarray = (rng.standard_normal(min(n, BLOCK), dtype=np.float32) * 0.02).astype(dtype)
    out: np.ndarray = np.empty(n, dtype=dtype)
    for start in range(0, n, len(tile)):
        chunk = out[start:start + len(tile)]
        chunk[:] = tile[:len(chunk)]
    return out.reshape(shape)


def write_llama(path: str | Path, *, n_layer: int, n_embd: int, n_head: int, n_head_kv: int,
                n_ff: int, n_vocab: int, context_length: int, dtype: str = "f16",
                seed: int = 0, sparse: bool = False,
                pieces: Iterator[str] | None = None) -> Path:
    """Write a llama-architecture GGUF with random weights that llama.cpp loads and runs.

    ``sparse`` leaves the data section a hole of zeros: a full-size file, header and all,
    that costs no disk and no time, for tests of code that reads only headers and sizes.
    ``pieces``: the vocabulary's pieces after the byte tokens (``numbered_pieces`` for an
    unusual one)."""
    if n_embd % n_head or n_head % n_head_kv:
        raise BadInput(f"n_embd {n_embd}, n_head {n_head}, n_head_kv {n_head_kv} do not divide")

    def keys(w: gguf.GGUFWriter) -> None:
        _add_hyperparameters(w, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                             n_head_kv=n_head_kv, n_ff=n_ff, context_length=context_length)

    return write_model(path, "llama", keys, _tensors(n_layer, n_embd, n_head, n_head_kv, n_ff,
                                                     n_vocab),
                       n_vocab=n_vocab, dtype=dtype, seed=seed, sparse=sparse, pieces=pieces)


def write_model(path: str | Path, arch: str, keys: Callable[[gguf.GGUFWriter], None],
                layout: list[tuple[str, tuple[int, ...]]], *, n_vocab: int,
                dtype: str = "f16", seed: int = 0, sparse: bool = False,
                pieces: Iterator[str] | None = None) -> Path:
    """Write a GGUF of architecture ``arch``: the shape keys ``keys`` adds, a SentencePiece
    vocabulary of ``n_vocab`` tokens, and the tensors of ``layout`` (name, numpy shape) with
    random weights (norms and other vectors ones, in f32)."""
    import gguf

    if dtype not in DTYPES:
        raise BadInput(f"unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    np_type, file_type = DTYPES[dtype]
    path = Path(path)
    w = gguf.GGUFWriter(path, arch)
    keys(w)
    w.add_vocab_size(n_vocab)
    w.add_file_type(file_type)
    _add_vocabulary(w, n_vocab, pieces)
    data_bytes = _add_tensor_infos(w, layout, np_type)
    partial = path.with_name(path.name + ".partial")  # a killed run leaves no plausible model
    try:
        w.write_header_to_file(partial)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        if sparse:
            assert w.fout is not None
            end = w.fout[0].tell()
            w.fout[0].truncate(end + -end % w.data_alignment + data_bytes)
        else:
            _write_weights(w, layout, np_type, np.random.default_rng(seed))
        w.close()
        os.replace(partial, path)
    finally:
        w.close()
        partial.unlink(missing_ok=True)
    return path


def _add_hyperparameters(w: gguf.GGUFWriter, *, n_layer: int, n_embd: int, n_head: int,
                         n_head_kv: int, n_ff: int, context_length: int) -> None:
    """The model's name and the llama architecture's shape keys."""
    w.add_name(f"tuner synthetic llama {n_layer}L {n_embd}d")
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)


def _add_vocabulary(w: gguf.GGUFWriter, n_vocab: int, pieces: Iterator[str] | None) -> None:
    """A SentencePiece ("llama") tokenizer of ``n_vocab`` tokens and its special tokens."""
    tokens, scores, types = vocabulary(n_vocab, pieces)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)


def _kept_f32(name: str, shape: tuple[int, ...]) -> bool:
    """Vectors, and the matrices llama.cpp's converters and quantizer keep in f32 (its CPU
    kernels read them only so: the state-space convolution's weights)."""
    return len(shape) == 1 or name.endswith(F32_MATRICES)


def _add_tensor_infos(w: gguf.GGUFWriter, layout: list[tuple[str, tuple[int, ...]]],
                      np_type: type) -> int:
    """Declare each tensor (norms stay f32, as llama.cpp's converters write them); the data
    section's size in bytes, alignment included."""
    data_bytes = 0
    for name, shape in layout:
        t = np.dtype(np.float32 if _kept_f32(name, shape) else np_type)
        nbytes = int(np.prod(shape)) * t.itemsize
        w.add_tensor_info(name, shape, t, nbytes)
        data_bytes += nbytes + -nbytes % w.data_alignment
    return data_bytes


def _write_weights(w: gguf.GGUFWriter, layout: list[tuple[str, tuple[int, ...]]],
                   np_type: type, rng: np.random.Generator) -> None:
    """Stream each tensor's data: norms ones, the rest small random weights."""
    for name, shape in layout:
        if len(shape) == 1:
            w.write_tensor_data(np.ones(shape, dtype=np.float32))
        elif _kept_f32(name, shape):
            w.write_tensor_data(_random(rng, shape, np.float32))
        else:
            w.write_tensor_data(_random(rng, shape, np_type))


def ftype_number(ftype: str) -> int:
    """llama.cpp's LLAMA_FTYPE_* number for a name such as 'q4_k_m' or 'q8_0'."""
    import llama_cpp

    name = ftype.strip().lower()
    if name == "f32":
        return int(llama_cpp.LLAMA_FTYPE_ALL_F32)
    number = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name.upper()}", None)
    if not isinstance(number, int):
        known = sorted(k.removeprefix("LLAMA_FTYPE_MOSTLY_").lower()
                       for k in dir(llama_cpp) if k.startswith("LLAMA_FTYPE_MOSTLY_"))
        raise BadInput(f"unknown quantization {ftype!r}", f"known: {', '.join(known)}")
    return number


def quantize(src: str | Path, dst: str | Path, ftype: str, *, verbose: bool = False) -> Path:
    """Quantize ``src`` into ``dst`` with llama.cpp itself (all CPU threads).

    Imports llama_cpp here, not at module level, so that importing this module keeps the
    library out of the parent process."""
    import ctypes
    import logging

    import llama_cpp

    if not verbose:  # llama-cpp-python prints library logs only at or above this level
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = os.cpu_count() or 1
    params.ftype = ftype_number(ftype)
    dst = Path(dst)
    status = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(),
                                            ctypes.byref(params))
    if status != 0:
        raise TunerError(f"llama.cpp could not quantize {src} to {ftype} (status {status})",
                         "run with verbose=True to see llama.cpp's log")
    return dst


def main(argv: list[str] | None = None) -> int:
    """Write a synthetic model of a known shape, optionally quantized."""
    p = argparse.ArgumentParser(prog="python -m tuner.models.modelgen", description=main.__doc__)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--quant", default="f16", help="f16, f32, or a llama.cpp type: q4_k_m, q8_0")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--keep-f16", action="store_true", help="keep the unquantized file as well")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="show llama.cpp's quantize log")
    args = p.parse_args(argv)
    try:
        return _generate(args)
    except TunerError as e:
        print(f"error: {e.message}" + (f"\nhint: {e.hint}" if e.hint else ""), file=sys.stderr)
        return e.exit_code


def _generate(args: argparse.Namespace) -> int:
    quant = args.quant.lower()
    if quant not in DTYPES:
        ftype_number(quant)  # an unknown name fails now, not after writing gigabytes
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    base = args.out if quant in DTYPES else args.out.with_name(args.out.stem + ".f16.gguf")
    write_llama(base, **SHAPES[args.shape], dtype=quant if quant in DTYPES else "f16",
                seed=args.seed)
    print(f"wrote {base} ({base.stat().st_size / 2**30:.2f} GiB, {args.shape}) "
          f"in {time.perf_counter() - start:.1f} s", flush=True)
    if quant not in DTYPES:
        t = time.perf_counter()
        try:
            quantize(base, args.out, quant, verbose=args.verbose)
        finally:
            if not args.keep_f16:
                base.unlink(missing_ok=True)
        print(f"quantized to {args.out} ({args.out.stat().st_size / 2**30:.2f} GiB, {quant}) "
              f"in {time.perf_counter() - t:.1f} s", flush=True)
    print(f"done in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
