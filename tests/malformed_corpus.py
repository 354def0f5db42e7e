"""Broken GGUF files, each made from a real valid model by one precise change, for tests of
the model check and of the CLI's one-line errors.

Positions inside the header are found with the ``gguf`` package's own reader (not with the
code under test), then overwritten in place.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from pathlib import Path

# A phrase the error message must contain for each case.
PROBLEMS: dict[str, str] = {
    "bad_magic": "not a GGUF file",
    "lfs_pointer": "Git LFS pointer",
    "unsupported_version": "unsupported GGUF version",
    "huge_tensor_count": "absurd tensor count",
    "tensor_count_beyond_file": "absurd tensor count",
    "huge_kv_count": "absurd key/value count",
    "huge_string_length": "absurd string length",
    "huge_array_length": "absurd array length",
    "bad_value_type": "invalid value type",
    "too_many_dims": "7 dimensions",
    "zero_dim": "zero or negative dimension",
    "unknown_ggml_type": "unknown ggml type",
    "truncated_header": "truncated header",
    "truncated_data": "truncated data",
    "zero_length": "empty",
    "directory": "directory",
    "no_read_permission": "permission denied",
}
UNPRIVILEGED_ID = 65534  # nobody / nogroup on Debian

LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:" + b"0" * 64 + b"\nsize 4920739232\n")


def _layout(model: Path) -> dict[str, int]:
    """Byte positions of the fields the cases overwrite, read with gguf's GGUFReader."""
    from gguf import GGUFReader

    reader = GGUFReader(model)
    first_key = next(f for name, f in reader.fields.items() if not name.startswith("GGUF."))
    key_len = int(first_key.parts[0][0])
    tokens = reader.fields["tokenizer.ggml.tokens"]
    tensor = reader.tensors[0]
    t_start = tensor.field.offset
    name_len = len(tensor.name.encode())
    n_dims_at = t_start + 8 + name_len
    return {
        "first_key": first_key.offset,
        "first_value_type": first_key.offset + 8 + key_len,
        "tokens_count": tokens.offset + 8 + len(tokens.name.encode()) + 4 + 4,
        "n_dims": n_dims_at,
        "dim0": n_dims_at + 4,
        "ggml_type": n_dims_at + 4 + 8 * len(tensor.shape),
        "data_offset": reader.data_offset,
        "data_end": max(t.data_offset + t.n_bytes for t in reader.tensors),  # absolute
    }


def _patched(src: Path, dst: Path, at: int, fmt: str, value: int | bytes) -> Path:
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        f.seek(at)
        f.write(value if isinstance(value, bytes) else struct.pack(fmt, value))
    return dst


def _truncated(src: Path, dst: Path, length: int) -> Path:
    with open(src, "rb") as f:
        dst.write_bytes(f.read(length))
    return dst


def build_corpus(directory: Path, valid_model: Path) -> dict[str, Path]:
    """Write one broken file per case in PROBLEMS into ``directory``; return case -> path.

    The directory is made world-readable, so an unprivileged user (see
    ``run_unprivileged_prefix``) can reach every file, and fail only on the chmod-000 one;
    its parents must be traversable too (pytest's own tmp folders are not)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    at = _layout(valid_model)
    out: dict[str, Path] = {}

    def case(name: str) -> Path:
        return directory / f"{name}.gguf"

    out["bad_magic"] = _patched(valid_model, case("bad_magic"), 0, "", b"GGML")
    out["lfs_pointer"] = case("lfs_pointer")
    out["lfs_pointer"].write_bytes(LFS_POINTER)
    out["unsupported_version"] = _patched(valid_model, case("unsupported_version"), 4, "<I", 1)
    out["huge_tensor_count"] = _patched(valid_model, case("huge_tensor_count"), 8, "<Q", 1 << 40)
    out["tensor_count_beyond_file"] = _patched(
        valid_model, case("tensor_count_beyond_file"), 8, "<Q", valid_model.stat().st_size // 8)
    out["huge_kv_count"] = _patched(valid_model, case("huge_kv_count"), 16, "<Q", 1 << 40)
    out["huge_string_length"] = _patched(
        valid_model, case("huge_string_length"), at["first_key"], "<Q", 1 << 62)
    out["huge_array_length"] = _patched(
        valid_model, case("huge_array_length"), at["tokens_count"], "<Q", 1 << 50)
    out["bad_value_type"] = _patched(
        valid_model, case("bad_value_type"), at["first_value_type"], "<I", 99)
    out["too_many_dims"] = _patched(valid_model, case("too_many_dims"), at["n_dims"], "<I", 7)
    out["zero_dim"] = _patched(valid_model, case("zero_dim"), at["dim0"], "<Q", 0)
    out["unknown_ggml_type"] = _patched(  # 4 was Q4_2, long removed from ggml
        valid_model, case("unknown_ggml_type"), at["ggml_type"], "<I", 4)
    out["truncated_header"] = _truncated(valid_model, case("truncated_header"),
                                         at["data_offset"] // 2)
    out["truncated_data"] = _truncated(valid_model, case("truncated_data"),
                                       (at["data_offset"] + at["data_end"]) // 2)
    out["zero_length"] = case("zero_length")
    out["zero_length"].write_bytes(b"")
    out["directory"] = case("directory")
    out["directory"].mkdir(exist_ok=True)
    out["no_read_permission"] = case("no_read_permission")
    shutil.copyfile(valid_model, out["no_read_permission"])
    for path in out.values():
        path.chmod(0o755 if path.is_dir() else 0o644)
    out["no_read_permission"].chmod(0o000)
    assert set(out) == set(PROBLEMS)
    return out


def world_readable_tmpdir(prefix: str = "tuner-test-") -> Path:
    """A fresh folder under the system temp dir that any user can enter and read."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def run_unprivileged_prefix() -> list[str]:
    """The command prefix that runs a command as ``nobody`` when we are root, else [].

    Root reads a chmod-000 file anyway, so a permission test must drop privileges; setpriv
    (util-linux) does it without a login shell. Note: the prefixed command must be able to
    reach its interpreter and code as that user (the repo and the venv are world-readable)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise RuntimeError("running as root without setpriv: install util-linux")
    return [setpriv, f"--reuid={UNPRIVILEGED_ID}", f"--regid={UNPRIVILEGED_ID}",
            "--clear-groups"]
