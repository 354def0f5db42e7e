"""Validate a GGUF model in the parent process, before any worker loads it.

A broken file should be a one-line error ("truncated: header promises N bytes, file has M"),
not a worker that segfaults, hangs or allocates 2**60 bytes. So this reads only the header with
``struct`` over a buffered file, checks every count against what the rest of the file could
hold before acting on it, and never allocates according to a number it read. The checks follow
what llama.cpp's own ``gguf_init_from_file`` rejects, so a file that passes here should load.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import struct
import sys
from pathlib import Path
from types import ModuleType

from tuner.models.ggufheader import CHUNK, INCOMPLETE, IO_TROUBLE, _fail, _Header, _open, _q
from tuner.specs import Frozen

MAX_TENSORS = 1 << 20
MAX_KV = 1 << 16
MAX_KEY_BYTES = 1 << 12
MAX_NAME_BYTES = 63  # GGML_MAX_NAME - 1
MAX_DIMS = 4
KEEP_STRING_BYTES = 4096  # string values longer than this are skipped, not kept
DEFAULT_ALIGNMENT = 32
SUPPORTED_VERSIONS = (2, 3)

# GGUF value types (gguf.constants.GGUFValueType): number -> (name, struct format or None).
STRING, ARRAY = 8, 9
VALUE_TYPES: dict[int, tuple[str, str | None]] = {
    0: ("uint8", "<B"), 1: ("int8", "<b"), 2: ("uint16", "<H"), 3: ("int16", "<h"),
    4: ("uint32", "<I"), 5: ("int32", "<i"), 6: ("float32", "<f"), 7: ("bool", "<?"),
    8: ("string", None), 9: ("array", None), 10: ("uint64", "<Q"), 11: ("int64", "<q"),
    12: ("float64", "<d"),
}
MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, one key byte, value type, smallest value
MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 4 + 8  # name length, one name byte, n_dims, type, offset

# First bytes of files people mistake for GGUF models, to say what the file is instead.
SIGNATURES: list[tuple[bytes, str]] = [
    (b"version https://git-lfs", "a Git LFS pointer, not the model (run 'git lfs pull')"),
    (b"PK\x03\x04", "a ZIP archive (a PyTorch checkpoint?)"),
    (b"<!DOCTYPE", "an HTML page (a failed download?)"),
    (b"<html", "an HTML page (a failed download?)"),
    (b"lmgg", "a legacy GGML file"), (b"fmgg", "a legacy GGMF file"),
    (b"tjgg", "a legacy GGJT file"), (b"\x80", "a Python pickle"),
]


class ModelInfo(Frozen):
    """What the header of a valid GGUF file says, as far as the tuner cares."""

    path: Path
    size_bytes: int
    gguf_version: int
    n_tensors: int
    n_kv: int
    architecture: str | None
    n_layers: int | None
    context_length: int | None
    n_vocab: int | None = None  # tokens of the vocabulary (tokenizer.ggml.tokens)
    file_type: int | None
    name: str | None
    alignment: int
    data_offset: int
    data_bytes: int


def _describe_magic(head: bytes) -> str:
    for prefix, what in SIGNATURES:
        if head.startswith(prefix):
            return f"it is {what}"
    text = ""
    for ch in head[:16].decode("ascii", errors="replace"):
        if not ch.isprintable() or ch == "\ufffd":
            break
        text += ch
    if len(text) >= 4:
        return f"it starts with the text {text!r}"
    return f"it starts with the bytes {head[:8].hex(' ')}"


def _magic_and_version(h: _Header) -> int:
    head = h.f.peek(32)[:32]  # type: ignore[attr-defined]  # a BufferedReader
    if h.size < 4 or h.take(4, "the magic") != b"GGUF":
        raise _fail(h.path, f"not a GGUF file: {_describe_magic(head)}",
                    "pass a .gguf model (convert other formats with llama.cpp's convert scripts)")
    version = h.u32("the GGUF version")
    if version not in SUPPORTED_VERSIONS:
        swapped = struct.unpack(">I", struct.pack("<I", version))[0]
        why = " (a big-endian file?)" if swapped in SUPPORTED_VERSIONS else ""
        raise _fail(h.path, f"unsupported GGUF version {version}{why}; only versions 2 and 3 "
                    "are supported", "re-convert the model with a current llama.cpp")
    return version


def _counts(h: _Header) -> tuple[int, int]:
    n_tensors, n_kv = h.u64("the tensor count"), h.u64("the key/value count")
    room = h.remaining()
    for n, what, cap, least in ((n_tensors, "tensor", MAX_TENSORS, MIN_TENSOR_INFO_BYTES),
                                (n_kv, "key/value", MAX_KV, MIN_KV_BYTES)):
        if n > cap or n * least > room:
            raise _fail(h.path, f"absurd {what} count: the header claims {n}, more than "
                        f"{'the cap of ' + str(cap) if n > cap else 'the file could hold'}")
    if n_tensors * MIN_TENSOR_INFO_BYTES + n_kv * MIN_KV_BYTES > room:
        raise _fail(h.path, f"absurd counts: {n_tensors} tensors and {n_kv} keys do not fit in "
                    f"the {h.size}-byte file")
    return n_tensors, n_kv


def _value(h: _Header, vtype: int, key: str) -> object:
    name, fmt = VALUE_TYPES[vtype]
    if vtype == STRING:
        return h.string(f"the value of {_q(key)}", h.remaining(), keep_max=KEEP_STRING_BYTES)
    assert fmt is not None
    return h.unpack(fmt, f"the {name} value of {_q(key)}")


def _check_type(h: _Header, vtype: int, key: str, allow_array: bool) -> None:
    if vtype not in VALUE_TYPES or (vtype == ARRAY and not allow_array):
        what = "nested array" if vtype == ARRAY else f"value type {vtype}"
        raise _fail(h.path, f"invalid value type: key {_q(key)} has {what}")


def _key_values(h: _Header, n_kv: int) -> dict[str, object]:
    """Read every key/value pair; keep the scalars and short strings, skip the arrays."""
    values: dict[str, object] = {}
    for i in range(n_kv):
        key = h.string(f"key #{i}", MAX_KEY_BYTES) or ""
        if not key or key in values:
            raise _fail(h.path, f"key #{i} is {'empty' if not key else 'a duplicate: ' + _q(key)}")
        vtype = h.u32(f"the value type of {_q(key)}")
        _check_type(h, vtype, key, allow_array=True)
        if key == "general.alignment" and vtype != 4:
            raise _fail(h.path, f"general.alignment must be a uint32, not {VALUE_TYPES[vtype][0]}")
        if vtype != ARRAY:
            values[key] = _value(h, vtype, key)
            continue
        etype = h.u32(f"the element type of {_q(key)}")
        _check_type(h, etype, key, allow_array=False)
        count = h.u64(f"the length of {_q(key)}")
        fmt = VALUE_TYPES[etype][1]
        least = 8 if etype == STRING else struct.calcsize(fmt or "")
        if count * least > h.remaining():
            raise _fail(h.path, f"absurd array length: {_q(key)} claims {count} elements, more "
                        f"than the {h.remaining()} bytes left in the file could hold")
        if etype == STRING:
            h.skip_strings(count, key)
        else:
            h.skip(count * least, f"the elements of {_q(key)}")
        # present, content not kept; the vocabulary's length is (llama.cpp's n_vocab)
        values[key] = count if key == "tokenizer.ggml.tokens" else None
    return values


@functools.cache
def _gguf_constants() -> ModuleType:
    """The gguf package's table of tensor types (``gguf.constants``, standard library only),
    without the package: importing ``gguf`` runs its ``__init__``, which loads numpy and its
    readers and writers, 0.2 s of CPU a sweep does not otherwise need."""
    if (loaded := sys.modules.get("gguf.constants")) is not None:
        return loaded
    spec = importlib.util.find_spec("gguf")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the gguf package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "constants.py"
    own = importlib.util.spec_from_file_location("tuner_gguf_constants", path)
    assert own is not None and own.loader is not None
    module = importlib.util.module_from_spec(own)
    own.loader.exec_module(module)
    return module


def _tensor_infos(h: _Header, n_tensors: int, alignment: int) -> int:
    """Check every tensor info; return the bytes the data section must hold."""
    gguf_constants = _gguf_constants()
    GGMLQuantizationType = gguf_constants.GGMLQuantizationType  # noqa: N806 - gguf's name
    sizes = {int(t): bs for t, bs in gguf_constants.GGML_QUANT_SIZES.items()}
    names: set[str] = set()
    expected = 0
    for i in range(n_tensors):
        name = h.string(f"the name of tensor #{i}", MAX_NAME_BYTES) or ""
        if name in names:
            raise _fail(h.path, f"duplicate tensor name {_q(name)}")
        names.add(name)
        n_dims = h.u32(f"the dimension count of tensor {_q(name)}")
        if n_dims > MAX_DIMS:
            raise _fail(h.path, f"tensor {_q(name)} has {n_dims} dimensions (at most {MAX_DIMS})")
        dims = [h.unpack("<q", f"the shape of tensor {_q(name)}") for _ in range(n_dims)]
        if any(d <= 0 for d in dims):
            raise _fail(h.path, f"tensor {_q(name)} has a zero or negative dimension {dims}")
        ggml_type = h.u32(f"the type of tensor {_q(name)}")
        if ggml_type not in sizes:
            raise _fail(h.path, f"tensor {_q(name)} has unknown ggml type {ggml_type}",
                        "the file is corrupt, or newer than this tuner's gguf package")
        block, type_size = sizes[ggml_type]
        if dims and dims[0] % block:
            raise _fail(h.path, f"tensor {_q(name)} of type {GGMLQuantizationType(ggml_type).name}"
                        f" has rows of {dims[0]}, not a multiple of its block size {block}")
        n_elements = 1
        for d in dims:
            n_elements *= int(d)
        nbytes = n_elements // block * type_size
        offset = h.u64(f"the data offset of tensor {_q(name)}")
        if offset != expected:
            raise _fail(h.path, f"tensor {_q(name)} starts at data offset {offset}, but the "
                        f"tensors before it end at {expected}")
        expected = offset + nbytes
        end = expected
        expected += -expected % alignment
    return end if n_tensors else 0


def _int_or_none(value: object) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def check_model(path: str | Path) -> ModelInfo:
    """Validate a GGUF file's header and size; raise ``BadModel`` with one line if unusable.
    A file checked before in this process and unchanged since (same size, modification time
    and inode) is not read again: the CLI checks a model before the sweep's machinery loads,
    and the sweep checks it again (a 135M model's header, with its vocabulary, takes 0.3 s)."""
    path = Path(path).absolute()
    try:
        st = os.stat(path)
    except OSError:
        return _check(path)  # _open says why, in one line
    return _checked(path, st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=8)
def _checked(path: Path, size: int, mtime_ns: int, inode: int) -> ModelInfo:
    """``_check`` once per file version (a bad model raises, and is not cached)."""
    return _check(path)


def _check(path: Path) -> ModelInfo:
    f, size = _open(path)
    with f:
        h = _Header(f, path, size)
        try:
            version = _magic_and_version(h)
            n_tensors, n_kv = _counts(h)
            values = _key_values(h, n_kv)
            alignment = values.get("general.alignment", DEFAULT_ALIGNMENT)
            if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
                raise _fail(path, f"general.alignment {alignment!r} is not a power of two")
            if n_tensors == 0:
                raise _fail(path, "has no tensors (a vocabulary-only file?)",
                            "pass a model with weights")
            data_bytes = _tensor_infos(h, n_tensors, alignment)
        except OSError as e:
            raise _fail(path, f"read error: {e.strerror or e}", IO_TROUBLE) from None
    data_offset = h.pos + (-h.pos % alignment)
    if data_offset + data_bytes > size:
        raise _fail(path, f"truncated data: header promises {data_offset + data_bytes} bytes, "
                    f"file has {size}", INCOMPLETE)
    arch = values.get("general.architecture")
    arch = arch if isinstance(arch, str) else None
    name = values.get("general.name")
    return ModelInfo(
        path=path, size_bytes=size, gguf_version=version, n_tensors=n_tensors, n_kv=n_kv,
        architecture=arch,
        n_layers=_int_or_none(values.get(f"{arch}.block_count")),
        context_length=_int_or_none(values.get(f"{arch}.context_length")),
        n_vocab=_int_or_none(values.get("tokenizer.ggml.tokens")),
        file_type=_int_or_none(values.get("general.file_type")),
        name=name if isinstance(name, str) else None,
        alignment=alignment, data_offset=data_offset, data_bytes=data_bytes,
    )


def file_sha256(path: str | Path) -> str:
    """The file's SHA-256 in hex, read in 1 MiB chunks so a 5 GB model costs no memory."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    except OSError as e:
        raise _fail(Path(path), f"cannot read the file: {e.strerror or e}", IO_TROUBLE) from None
    return digest.hexdigest()


__all__ = ["ModelInfo", "check_model", "file_sha256"]
