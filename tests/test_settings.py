"""The settings table (tuner/settings.py) and what derives from it: spec fields, the space, the
worker's llama.cpp params (the real llama-cpp-python structs), the server config (the real
llama_cpp.server settings), report columns, labels, spec keys, and the load-log checks of
n_ctx / n_batch / n_ubatch on real llama.cpp logs. Fast: nothing loads a model."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest

from tuner import settings
from tuner.errors import BadInput
from tuner.evidence.effective import SPEED_FIELDS, trial_settings
from tuner.evidence.placement import Expectation, expect, parse_load_log, verify
from tuner.reports.exporters import NUMERIC
from tuner.reports.rows import COLUMNS
from tuner.results.records import TrialRecord
from tuner.search.space import BASELINE, Space, load_space
from tuner.specs import ContextSettings, ModelSettings, TrialSpec, Workload
from tuner.worker.bench import context_params

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"

# One value off the default per setting: a new setting must name one here (its test).
SAMPLES: dict[str, object] = {
    "build": "b2", "n_gpu_layers": 7, "cuda_graphs": False, "split_mode": "none", "main_gpu": 1,
    "tensor_split": [3.0, 1.0],
    "n_batch": 1024, "n_ubatch": 256, "flash_attn": True, "kv_cache": "q8_0/q8_0",
    "n_threads": 3, "op_offload": False, "n_cpu_moe": 2, "ffn_on_host": "down",
    "use_mmap": False,
}


def spec_with(name: str, value: object) -> TrialSpec:
    s = settings.BY_NAME[name]
    fields = s.fields_of(value)
    extra = {"flash_attn": True} if name == "kv_cache" else {}
    if s.level == "model":
        return TrialSpec(model=ModelSettings(**fields), context=ContextSettings())
    return TrialSpec(model=ModelSettings(), context=ContextSettings(**fields, **extra))


def test_every_setting_has_a_sample_off_its_default() -> None:
    assert set(SAMPLES) == set(settings.BY_NAME)
    for name, value in SAMPLES.items():
        assert value != settings.BY_NAME[name].default, name


def test_names_keys_columns_and_fields_are_unique() -> None:
    for attr in ("name", "key", "column"):
        values = [getattr(s, attr) for s in settings.SETTINGS]
        assert len(values) == len(set(values)), attr
    fields = [f for s in settings.SETTINGS for f in s.names]
    assert len(fields) == len(set(fields))


def test_spec_objects_hold_exactly_the_declared_fields_and_defaults() -> None:
    assert set(ModelSettings.model_fields) == settings.spec_fields("model") | {"device"}
    assert set(ContextSettings.model_fields) == settings.spec_fields("context")
    for s in settings.SETTINGS:
        cls = ModelSettings if s.level == "model" else ContextSettings
        for f, v in s.fields_of(s.spec_default).items():
            assert cls.model_fields[f].default == v, f
        # A spec's value reads back as the space value it was made from.
        assert s.of_spec(spec_with(s.name, SAMPLES[s.name])) == SAMPLES[s.name]


def test_space_lists_every_space_setting_with_its_default() -> None:
    space = Space()
    assert set(Space.model_fields) == {s.key for s in settings.SPACE_SETTINGS}
    for s in settings.SPACE_SETTINGS:
        assert space.values(s) == [s.default]
    assert ContextSettings(n_batch=512, n_ubatch=512, flash_attn=False,
                           type_k="f16", type_v="f16") == BASELINE


@pytest.mark.parametrize(("text", "message"), [
    ("n_batch: [0]", "n_batch: Value error, 0 is outside the range of n_batch: 1 to 2147483647"),
    ("kv_cache: [q8]", "kv_cache: Value error, KV cache entry 'q8' must be 'K/V'"),
    ("n_threads: []", "n_threads: Value error, must list at least one value"),
    ("flash_attn: [maybe]", "flash_attn.0: Input should be a valid boolean"),
    ("unknown_knob: [1]", "unknown_knob: Extra inputs are not permitted"),
])
def test_bad_space_values_are_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "space.yaml"
    p.write_text(text + "\n")
    with pytest.raises(BadInput) as e:
        load_space(p)
    assert message in e.value.message
    assert "\n" not in e.value.message


def test_worker_params_carry_every_declared_setting() -> None:
    """Each setting with an ``apply`` changes the real llama.cpp param struct it names."""
    import llama_cpp

    for s in settings.SETTINGS:
        if not s.apply:
            continue
        spec = spec_with(s.name, SAMPLES[s.name])
        if s.level == "context":
            base = context_params(llama_cpp, ContextSettings(), 512, 2)
            got = context_params(llama_cpp, spec.context, 512, 2)
        else:
            base, got = (llama_cpp.llama_model_default_params() for _ in range(2))
            settings.apply_model(llama_cpp, base, ModelSettings())
            settings.apply_model(llama_cpp, got, spec.model)
        changed = {f for f, _ in type(got)._fields_
                   if not f.startswith(("cb_", "abort", "progress", "devices", "tensor_",
                                        "kv_overrides", "samplers", "ctx_other"))
                   and getattr(got, f) != getattr(base, f)}
        if s.level == "model" and bool(got.tensor_split) != bool(base.tensor_split):  # pointer
            changed.add("tensor_split")
        if s.level == "model" and bool(got.tensor_buft_overrides) != bool(
                base.tensor_buft_overrides):  # a pointer, read back below
            changed.add("tensor_buft_overrides")
        assert changed, f"{s.name}: the worker's params do not change"


def test_server_config_fields_exist_in_llama_cpp_server() -> None:
    from llama_cpp.server.settings import ModelSettings as ServerModel

    assert set(SPEED_FIELDS) <= set(ServerModel.model_fields)
    for s in settings.SETTINGS:
        spec = spec_with(s.name, SAMPLES[s.name])
        entry = trial_settings(spec, Workload(), 4) if not s.deployable(spec) else None
        if s.server:
            assert entry is not None and set(s.server(spec)) <= set(entry), s.name
            assert set(entry) <= set(SPEED_FIELDS)
        elif s.env:
            assert s.env(spec.model), s.name  # off its default it asks for an env variable
        elif not s.deployed_by:
            # Nothing in the server holds it: only the value the server runs may be deployed.
            assert s.deployable(spec) is not None
            with pytest.raises(BadInput):
                trial_settings(spec, Workload(), 4)


def test_every_setting_declares_its_proof_or_why_the_log_has_none() -> None:
    for s in settings.SETTINGS:
        assert bool(s.expect) != bool(s.unproven), s.name
        if s.expect:
            assert set(s.expect(spec_with(s.name, SAMPLES[s.name]))) <= set(
                Expectation.model_fields), s.name


def test_report_columns_and_numeric_columns_come_from_the_table() -> None:
    shown = [s.column for s in settings.SETTINGS if s.shown]
    assert list(COLUMNS[2:2 + len(shown)]) == shown == [
        "build", "ngl", "n_batch", "n_ubatch", "fa", "kv", "threads"]
    assert {s.column for s in settings.SETTINGS if s.numeric} <= NUMERIC
    assert settings.optional_columns([spec_with("n_batch", 1024)]) == []
    assert settings.optional_columns([spec_with("cuda_graphs", False)]) == [
        settings.BY_NAME["cuda_graphs"]]


def test_labels_keep_their_format() -> None:
    cuda = TrialSpec(model=ModelSettings(build="b2", cuda_graphs=False),
                     context=ContextSettings(n_batch=1024, n_ubatch=256, flash_attn=True,
                                             type_k="q8_0", type_v="q8_0"))
    assert cuda.label() == "b2 b1024/u256 fa kv q8_0/q8_0 ngl -1 no-graphs"
    cpu = TrialSpec(model=ModelSettings(device="cpu"), context=ContextSettings(n_threads=2))
    assert cpu.label() == "default b512/u512 nofa kv f16/f16 t2"


def test_stored_records_keep_their_keys() -> None:
    """Real records of older versions load, and their specs still hash to the stored key (a
    setting added later is left out of the key at its default)."""
    files = glob.glob(str(REPO / "docs/benchmarks/**/trials.jsonl"), recursive=True)
    assert files
    n = 0
    for f in files:
        for line in Path(f).read_text().splitlines():
            if line.strip():
                r = TrialRecord.model_validate_json(line)
                assert r.spec.key() == r.spec_key
                n += 1
    assert n > 10


def test_key_dump_leaves_out_only_later_settings_at_default() -> None:
    dump = TrialSpec(model=ModelSettings(), context=ContextSettings()).model_dump()
    kept = settings.key_dump(dump)
    later = [s for s in settings.SETTINGS if not s.keyed_at_default]
    for s in later:
        assert all(f not in kept[s.level] for f in s.names)
    keyed = {f for s in settings.SETTINGS if s.keyed_at_default for f in s.names}
    assert keyed <= set(kept["model"]) | set(kept["context"])
    assert json.dumps(settings.space_dump(Space().model_dump()), sort_keys=True)


# -- the load log's n_ctx / n_batch / n_ubatch -------------------------------------------------

CPU_LOG = (FIXTURES / "cpu-build-load.log").read_text()  # n_ctx 256, n_batch 256, n_ubatch 256
CUDA_LOG = (FIXTURES / "cuda-h100-full-offload.log").read_text()  # 4096 / 2048 / 512


def _sizes(ev_text: str, **asked: int) -> list[str]:
    ex = Expectation(device="cpu", **asked)
    return [r for r in verify(parse_load_log(ev_text), ex).reasons
            if any(k in r for k in ("n_ctx", "n_batch", "n_ubatch", "context size"))]


def test_sizes_as_asked_are_proven() -> None:
    assert _sizes(CPU_LOG, n_ctx=256, n_batch=256, n_ubatch=256) == []
    assert _sizes(CUDA_LOG, n_ctx=4096, n_batch=2048, n_ubatch=512) == []
    # llama.cpp clamps n_batch to the context asked and n_ubatch to n_batch.
    assert _sizes(CPU_LOG, n_ctx=256, n_batch=4096, n_ubatch=512) == []


def test_sizes_not_as_asked_are_each_one_reason() -> None:
    assert _sizes(CUDA_LOG, n_ctx=4096, n_batch=1024, n_ubatch=512) == [
        "n_batch 2048 in the log, expected 1024"]
    assert _sizes(CUDA_LOG, n_ctx=4096, n_batch=2048, n_ubatch=256) == [
        "n_ubatch 512 in the log, expected 256"]
    assert _sizes(CUDA_LOG, n_ctx=8192) == ["context size n_ctx 4096 in the log, expected 8192"]
    assert _sizes("load_tensors: layer 0 assigned to device CPU\n", n_ctx=64, n_batch=64,
                  n_ubatch=64) == [
        "the log does not show the context size (expected n_ctx 64)",
        "the log does not show n_batch (expected 64)",
        "the log does not show n_ubatch (expected 64)"]


def test_trial_expectation_comes_from_the_settings_and_workload() -> None:
    spec = TrialSpec(model=ModelSettings(device="cpu"),
                     context=ContextSettings(n_batch=256, n_ubatch=128))
    ex = expect(spec, Workload(prompt_tokens=100, gen_tokens=20), build="default")
    assert (ex.device, ex.n_gpu_layers, ex.n_ctx, ex.n_batch, ex.n_ubatch, ex.type_k,
            ex.flash_attn, ex.build) == ("cpu", 0, 120, 256, 128, "f16", False, "default")
    v = verify(parse_load_log(CPU_LOG), ex)
    assert "n_ubatch 256 in the log, expected 128" in v.reasons
