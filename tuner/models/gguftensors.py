"""The tensor table and the hyperparameters of a GGUF file, read from its header (no weights):
what ``tuner.models.memplan`` sizes a model's memory from. The file is validated first by
``tuner.models.modelcheck.check_model``, so a damaged header is a one-line ``BadModel``; this
reader then keeps the scalars and the short numeric arrays (per-layer head counts) it needs."""

from __future__ import annotations

import functools
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from tuner.models.ggufheader import _Header, _open, _q
from tuner.models.modelcheck import (
    ARRAY,
    MAX_KEY_BYTES,
    MAX_NAME_BYTES,
    STRING,
    VALUE_TYPES,
    _counts,
    _gguf_constants,
    _magic_and_version,
    _value,
    check_model,
)
from tuner.settings import EXPERT_PATTERN

MAX_KEPT_ARRAY = 4096  # numeric arrays up to this length are kept (per-layer values)
# A mixture of experts' expert weights (all experts of a layer in one 3-D tensor): the
# tensors llama-server's --n-cpu-moe keeps on the host (common.h's LLM_FFN_EXPS_REGEX), of
# which a token reads only the experts it uses (settings.EXPERT_PATTERN, the tensor-override
# pattern of the setting n_cpu_moe).
EXPERT_TENSOR = re.compile(EXPERT_PATTERN)


def experts_used_share(n_expert: object, n_expert_used: object) -> float:
    """The share of a layer's experts one token goes through (``expert_used_count`` over
    ``expert_count``); 1.0 for a dense model or keys that are not positive integers."""
    def positive(n: object) -> int:
        return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 0
    count, used = positive(n_expert), positive(n_expert_used)
    return min(used, count) / count if count and used else 1.0


@dataclass(frozen=True)
class Tensor:
    """One tensor of the file: its name, ggml type name (``Q4_K``), shape, and bytes."""

    name: str
    ggml_type: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class GgufTable:
    """The header's key/values (scalars, short strings, short numeric arrays) and tensors."""

    path: Path
    size_bytes: int
    values: dict[str, object]
    tensors: tuple[Tensor, ...]


def ggml_row_bytes(type_name: str, n: int) -> int:
    """Bytes of ``n`` values of a ggml type (``ggml_row_size``): whole blocks."""
    consts = _gguf_constants()
    t = consts.GGMLQuantizationType[type_name.upper()]
    block, size = consts.GGML_QUANT_SIZES[t]
    return -(-n // block) * size


def read_table(path: str | Path) -> GgufTable:
    """Read the header of the GGUF at ``path`` (checked first: a bad file raises BadModel)."""
    path = Path(path).absolute()
    check_model(path)
    consts = _gguf_constants()
    sizes = {int(t): bs for t, bs in consts.GGML_QUANT_SIZES.items()}
    f, size = _open(path)
    with f:
        h = _Header(f, path, size)
        _magic_and_version(h)
        n_tensors, n_kv = _counts(h)
        values: dict[str, object] = {}
        for i in range(n_kv):
            key = h.string(f"key #{i}", MAX_KEY_BYTES) or ""
            vtype = h.u32(f"the value type of {_q(key)}")
            if vtype != ARRAY:
                values[key] = _value(h, vtype, key)
                continue
            etype = h.u32(f"the element type of {_q(key)}")
            count = h.u64(f"the length of {_q(key)}")
            if etype == STRING:
                h.skip_strings(count, key)
                continue
            fmt = VALUE_TYPES[etype][1] or ""
            width = struct.calcsize(fmt)
            if count <= MAX_KEPT_ARRAY:
                raw = h.take(count * width, f"the elements of {_q(key)}")
                values[key] = list(struct.unpack(f"<{count}{fmt[1:]}", raw))
            else:
                h.skip(count * width, f"the elements of {_q(key)}")
        tensors: list[Tensor] = []
        for i in range(n_tensors):
            name = h.string(f"the name of tensor #{i}", MAX_NAME_BYTES) or ""
            n_dims = h.u32(f"the dimension count of tensor {_q(name)}")
            dims = tuple(int(h.unpack("<q", f"the shape of tensor {_q(name)}"))
                         for _ in range(n_dims))
            ggml_type = h.u32(f"the type of tensor {_q(name)}")
            h.u64(f"the data offset of tensor {_q(name)}")
            block, type_size = sizes[ggml_type]
            n = 1
            for d in dims:
                n *= d
            tensors.append(Tensor(name, consts.GGMLQuantizationType(ggml_type).name, dims,
                                  n // block * type_size))
    return GgufTable(path=path, size_bytes=size, values=values, tensors=tuple(tensors))


def block_count(path: str | os.PathLike[str]) -> int:
    """The repeating layers of the GGUF at ``path`` (``<arch>.block_count``; a bad file raises
    BadModel, a header without the count ValueError). The header is read once per version of
    the file (its size and modification time): a served phase resolves ffn_on_host's layer for
    the server's arguments, its environment and the client's several times a start."""
    p = Path(path).absolute()
    try:
        st = p.stat()
        version: tuple[int, int] | None = (st.st_size, st.st_mtime_ns)
    except OSError:
        version = None  # read_table says what is wrong with it
    return _block_count(p, version)


@functools.lru_cache(maxsize=16)
def _block_count(path: Path, version: tuple[int, int] | None) -> int:
    values = read_table(path).values
    n = values.get(f"{values.get('general.architecture')}.block_count")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"{path.name} has no block_count in its header")
    return n
