"""The model check: every broken file is one readable line naming its problem, and real models
(a generated one and SmolLM2 as shipped) pass with the values their headers hold."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gguf import GGUFReader

from tests.malformed_corpus import PROBLEMS, run_unprivileged_prefix
from tuner.errors import BadModel
from tuner.models.modelcheck import check_model, file_sha256
from tuner.models.modelgen import SHAPES, write_llama

REPO = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0
TRACEBACK_WORDS = ("Traceback", 'File "', "struct.error", "Errno", "Exception", "\n")


def assert_one_line_naming(error: BadModel, path: Path, phrase: str) -> None:
    for word in TRACEBACK_WORDS:
        assert word not in error.message, f"{word!r} in {error.message!r}"
    assert error.message.startswith(str(path)), error.message
    assert phrase in error.message, error.message
    assert error.hint and "\n" not in error.hint


@pytest.mark.parametrize("case", sorted(PROBLEMS))
def test_each_broken_file_is_one_line_naming_its_problem(
        malformed_models: dict[str, Path], case: str) -> None:
    if case == "no_read_permission" and IS_ROOT:
        pytest.skip("root reads a chmod-000 file; checked as nobody in the test below")
    path = malformed_models[case]
    # The bounds in this file guard against reading or allocating by a corrupt count: CPU
    # time of this process, which tests running side by side do not stretch.
    started = time.process_time()
    with pytest.raises(BadModel) as caught:
        check_model(path)
    assert time.process_time() - started < 2  # no reading or allocating by a corrupt count
    assert_one_line_naming(caught.value, path, PROBLEMS[case])


def test_truncated_data_says_what_the_header_promises(
        malformed_models: dict[str, Path], tiny_model: Path) -> None:
    path = malformed_models["truncated_data"]
    with pytest.raises(BadModel) as caught:
        check_model(path)
    promised = check_model(tiny_model).data_offset + check_model(tiny_model).data_bytes
    assert (f"header promises {promised} bytes, file has {path.stat().st_size}"
            in caught.value.message)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadModel) as caught:
        check_model(tmp_path / "nope.gguf")
    assert_one_line_naming(caught.value, tmp_path / "nope.gguf", "not found")


def test_unreadable_file_as_an_unprivileged_user(
        malformed_models: dict[str, Path], tiny_model: Path) -> None:
    """As nobody (when root), a chmod-000 file fails and a readable copy of it passes, so the
    failure is the permission and not the unprivileged environment."""
    unreadable = malformed_models["no_read_permission"]
    readable = unreadable.parent / "readable.gguf"
    shutil.copyfile(tiny_model, readable)
    readable.chmod(0o644)
    script = (
        "import json, sys\n"
        "from tuner.errors import BadModel\n"
        "from tuner.models.modelcheck import check_model\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        out[p] = ['ok', check_model(p).n_tensors]\n"
        "    except BadModel as e:\n"
        "        out[p] = ['bad', e.message]\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"}
    done = subprocess.run(
        [*run_unprivileged_prefix(), sys.executable, "-c", script, str(readable),
         str(unreadable)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out[str(readable)] == ["ok", 21]
    state, message = out[str(unreadable)]
    assert state == "bad" and "permission denied" in message and "\n" not in message


def test_tiny_model_matches_what_gguf_reads(tiny_model: Path) -> None:
    info = check_model(tiny_model)
    reader = GGUFReader(tiny_model)
    assert (info.gguf_version, info.architecture, info.n_layers) == (3, "llama", 2)
    assert (info.context_length, info.file_type) == (2048, 1)
    assert info.n_tensors == len(reader.tensors) == 21
    assert info.n_kv == len(reader.fields) - 3  # the reader adds 3 pseudo-fields for the header
    assert info.data_offset == reader.data_offset and info.data_offset % info.alignment == 0
    ends = [t.data_offset + t.n_bytes for t in reader.tensors]
    assert info.data_offset + info.data_bytes == max(ends) <= info.size_bytes
    assert info.size_bytes == tiny_model.stat().st_size


def test_smollm2_as_shipped(smollm2_path: Path) -> None:
    """Values read once with gguf's GGUFReader (which takes seconds on this vocabulary)."""
    started = time.process_time()
    info = check_model(smollm2_path)
    elapsed = time.process_time() - started
    assert info.architecture == "llama" and info.n_layers == 30
    assert info.context_length == 8192 and info.file_type == 3  # MOSTLY_Q4_1
    assert info.name and "smollm2" in info.name.lower()
    assert (info.n_tensors, info.n_kv, info.data_offset) == (272, 33, 1785664)
    end = info.data_offset + info.data_bytes
    assert 0 <= info.size_bytes - end < info.alignment  # only the last tensor's padding after
    assert elapsed < 2, f"{elapsed:.2f} s to read a 49k-token vocabulary"


def test_full_size_8b_header_is_read_fast(tmp_path: Path) -> None:
    """A 15 GiB llama3-8b file (sparse: header real, data a hole) with a 128k vocabulary."""
    shape = SHAPES["llama3-8b"]
    path = write_llama(tmp_path / "llama3-8b-sparse.gguf", **shape, sparse=True)
    started = time.process_time()
    info = check_model(path)
    elapsed = time.process_time() - started
    e, v, f, layers = shape["n_embd"], shape["n_vocab"], shape["n_ff"], shape["n_layer"]
    kv = e // shape["n_head"] * shape["n_head_kv"]
    f16 = 2 * v * e + layers * (2 * e * e + 2 * kv * e + 3 * f * e)
    f32 = e * (2 * layers + 1)
    assert info.data_bytes == 2 * f16 + 4 * f32  # every tensor size is a multiple of 32
    assert (info.n_layers, info.context_length, info.n_tensors) == (32, 8192, 291)
    assert info.size_bytes == info.data_offset + info.data_bytes > 14.9 * 2**30
    assert elapsed < 2, f"{elapsed:.2f} s for the header of an 8B model"


def test_file_sha256_matches_hashlib(tiny_model: Path) -> None:
    assert tiny_model.stat().st_size > 2 * (1 << 20)  # more than one chunk
    assert file_sha256(tiny_model) == hashlib.sha256(tiny_model.read_bytes()).hexdigest()


def test_file_sha256_of_missing_file_is_bad_model(tmp_path: Path) -> None:
    with pytest.raises(BadModel):
        file_sha256(tmp_path / "missing.gguf")


def test_random_damage_is_a_bad_model_or_harmless(tiny_model: Path, tmp_path: Path) -> None:
    """Flip random header bytes and cut the file at random lengths: the check either passes or
    raises BadModel (never another exception, never slowly), and it never passes a cut file."""
    import random

    rng = random.Random(0)
    original = tiny_model.read_bytes()
    header_end = check_model(tiny_model).data_offset
    target = tmp_path / "damaged.gguf"
    outcomes = {"passed": 0, "bad": 0}
    for i in range(400):
        data = bytearray(original)
        if i % 2:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(header_end)] = rng.randrange(256)
        else:
            del data[rng.randrange(len(original)):]
        target.write_bytes(bytes(data))
        started = time.process_time()
        try:
            check_model(target)
            outcomes["passed"] += 1
            assert i % 2, f"a file cut to {len(data)} of {len(original)} bytes passed"
        except BadModel as e:
            outcomes["bad"] += 1
            assert "\n" not in e.message and "Traceback" not in e.message
        assert time.process_time() - started < 1
    assert outcomes["bad"] > 200  # the damage was real


def test_a_file_is_read_again_once_it_changes(tiny_model: Path, tmp_path: Path) -> None:
    """The check of an unchanged file is remembered (the CLI and the sweep both check it); a
    file truncated in place since is read again and refused."""
    model = tmp_path / "m.gguf"
    shutil.copyfile(tiny_model, model)
    first = check_model(model)
    assert check_model(model) is first  # not read again
    with model.open("r+b") as f:
        f.truncate(model.stat().st_size - 1)
    with pytest.raises(BadModel) as err:
        check_model(model)
    assert_one_line_naming(err.value, model, "truncated data")


def test_the_check_reads_gguf_types_without_the_gguf_package(tiny_model: Path) -> None:
    """The check takes gguf's table of tensor types, not the package, whose import loads numpy
    and its readers and writers in every sweep; a file with types the table lacks still fails
    by name (test_each_broken_file_is_one_line_naming_its_problem)."""
    code = ("import sys\n"
            "from pathlib import Path\n"
            "from tuner.models.modelcheck import check_model\n"
            f"info = check_model(Path({str(tiny_model)!r}))\n"
            "assert info.n_tensors > 0\n"
            "assert 'gguf' not in sys.modules and 'numpy' not in sys.modules, 'gguf imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr
