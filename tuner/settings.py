"""Every tunable setting, declared once: its space YAML key and value type, the spec object it
belongs to (a worker's ``ModelSettings`` or a context's ``ContextSettings``), how it is set on
llama.cpp's params, how llama_cpp.server's config holds it (or the environment, or nothing),
its report column, analysis value and label, and what in the load log proves it.

The search space (``tuner.search.space``), the grid, the worker's model and context params
(``tuner.worker``), the server config (``tuner.evidence.effective``), the report columns
(``tuner.reports.rows``, ``tuner.reports.exporters``, ``tuner.reports.views``), the analysis dimensions, the trial
label and the verification's expectation (``tuner.evidence.placement``) are all read from ``SETTINGS``.
Adding a dimension is one ``Setting`` here (plus its field on ``ModelSettings`` or
``ContextSettings``, which a test checks against this table) and its tests.

Nothing here imports llama_cpp: the worker passes its module in."""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol


class Spec(Protocol):
    """What a setting reads of a trial (tuner.specs.TrialSpec, whose model and context classes
    are built from this table, so they are declared there, not here)."""

    @property
    def model(self) -> Any: ...

    @property
    def context(self) -> Any: ...


class ContextSize(Protocol):
    """What ``expectation`` reads of a workload (tuner.specs.Workload)."""

    @property
    def n_ctx(self) -> int: ...

Level = Literal["model", "context"]

# ggml_type numbers of the K/V cache types llama.cpp accepts (ggml.h); the server config stores
# these numbers in type_k / type_v.
KV_TYPES: dict[str, int] = {
    "f32": 0,
    "f16": 1,
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 6,
    "q5_1": 7,
    "q8_0": 8,
    "iq4_nl": 20,
    "bf16": 30,
}
UNQUANTIZED_KV = {"f32", "f16", "bf16"}

# llama_split_mode (llama.h): the space names the modes, the spec and server config hold the
# number. LLAMA_SPLIT_MODE_TENSOR (3) is left out: its layers live on a "Meta" device that the
# load log's per-layer lines do not attribute to one GPU.
SPLIT_MODES: dict[str, int] = {"none": 0, "layer": 1, "row": 2}
# GGML_MAX_N_THREADS (ggml.h): the most threads a ggml CPU threadpool takes.
MAX_THREADS = 512
# The most tokens one batch can hold: llama_batch_init's n_tokens is an int32_t.
MAX_BATCH = 2**31 - 1
# LLAMA_MAX_DEVICES of a CUDA build (GGML_CUDA_MAX_DEVICES): the most entries a tensor split has.
MAX_SPLIT_DEVICES = 16


def _on(v: bool) -> str:
    return "on" if v else "off"


@dataclass(frozen=True)
class Setting:
    """One tunable setting. ``fields`` are the attributes it sets on the spec object of its
    ``level``; a space value becomes them through ``to_fields`` (default: the one field)."""

    name: str                         # analysis dimension and default space key
    level: Level
    value_type: Any                   # type of one value in a space list
    default: Any                      # the value when a space does not list it (the baseline)
    column: str                       # report column
    cell: Callable[[Spec], Any]  # report cell (and analysis value unless ``value``)
    doc: str
    space_key: str = ""               # space YAML key (default: name)
    fields: tuple[str, ...] = ()      # spec attributes (default: (name,))
    to_fields: Callable[[Any], dict[str, Any]] | None = None
    from_fields: Callable[[Any], Any] | None = None  # spec object -> space value
    check: Callable[[list[Any]], None] | None = None  # raises ValueError on a bad space list
    value: Callable[[Spec], Any] | None = None   # analysis value (default: cell)
    label: Callable[[Spec], str | None] | None = None
    label_rank: int = 100             # where its part goes in ``TrialSpec.label()``
    # How a worker applies it: to llama_model_params / llama_context_params (``lc`` is the
    # llama_cpp module, ``obj`` the ModelSettings / ContextSettings), or to its environment.
    apply: Callable[[Any, Any, Any], None] | None = None
    env: Callable[[Any], dict[str, str]] | None = None
    # How llama_cpp.server runs it: ``server`` gives its ModelSettings fields; a setting with
    # neither ``server`` nor ``env`` is run by the server at ``server_runs`` only, and a trial
    # measured at another value cannot become the production config.
    server: Callable[[Spec], dict[str, Any]] | None = None
    server_runs: Any = None
    deployed_by: str = ""             # how a service gets it otherwise (the sidecar's env)
    # What proves it: the placement ``Expectation`` fields it sets (checked against the load
    # log by ``tuner.evidence.placement.verify``), or why the log cannot.
    expect: Callable[[Spec], dict[str, Any]] | None = None
    unproven: str = ""
    numeric: bool = False             # report column is a number
    bounds: dict[str, int] | None = None  # pydantic bounds of the spec field (ge, le)
    field_type: Any = None            # type of the spec field(s) (default: value_type)
    field_default: Any = ...          # the spec field's default (default: ``default``)
    in_space: bool = True             # a space may list values of it
    shown: bool = True                # report column always; else only when a record differs
    keyed_at_default: bool = False    # in TrialSpec.key()/space_id at its default (old keys)
    # in space_id at its default (default: keyed_at_default); False for a setting in every
    # key since the start that became searchable later (its space list is new)
    spaced_at_default: bool | None = None
    changes_ops: bool = True          # decides where graph operations run (op proof key)

    @property
    def spec_default(self) -> Any:
        return self.default if self.field_default is ... else self.field_default

    @property
    def in_space_id_at_default(self) -> bool:
        return self.keyed_at_default if self.spaced_at_default is None else self.spaced_at_default

    def within_bounds(self, value: int) -> bool:
        b = self.bounds or {}
        return b.get("ge", value) <= value <= b.get("le", value)

    def bounds_text(self) -> str:
        b = self.bounds or {}
        if "le" in b:
            return f"{b.get('ge', '-inf')} to {b['le']}"
        return f"{b.get('ge')} and up"

    @property
    def key(self) -> str:
        return self.space_key or self.name

    @property
    def names(self) -> tuple[str, ...]:
        return self.fields or (self.name,)

    def fields_of(self, value: Any) -> dict[str, Any]:
        return self.to_fields(value) if self.to_fields else {self.names[0]: value}

    def of(self, obj: Any) -> Any:
        """Its space value on a ModelSettings / ContextSettings."""
        return self.from_fields(obj) if self.from_fields else getattr(obj, self.names[0])

    def of_spec(self, spec: Spec) -> Any:
        return self.of(spec.model if self.level == "model" else spec.context)

    def analysis_value(self, spec: Spec) -> Any:
        return (self.value or self.cell)(spec)

    def deployable(self, spec: Spec) -> str | None:
        """None, or why llama_cpp.server cannot run the spec's value of this setting."""
        if self.server or self.env or self.deployed_by:
            return None
        got = self.of_spec(spec)
        if got == self.server_runs:
            return None
        return (f"llama_cpp.server cannot run {self.name}={got!r} (its settings have no such "
                f"field; it always runs {self.server_runs!r})")


# -- per-setting helpers -------------------------------------------------------------------

def _build_names(v: list[str]) -> None:
    if any(not name.strip() for name in v):
        raise ValueError("build names must not be empty")


def _threads(v: list[int | None]) -> None:
    if any(x is not None and x < 1 for x in v):
        raise ValueError("thread counts must be positive integers (or null: llama.cpp's "
                         "choice)")


def _kv_pairs(v: list[str]) -> None:
    for pair in v:
        k, sep, val = pair.partition("/")
        if not sep:
            raise ValueError(f"KV cache entry {pair!r} must be 'K/V', e.g. 'q8_0/q8_0'")
        for t in (k, val):
            if t not in KV_TYPES:
                raise ValueError(f"unknown KV cache type {t!r} (known: "
                                 f"{', '.join(sorted(KV_TYPES))})")


def _kv_fields(pair: str) -> dict[str, Any]:
    k, _, v = pair.partition("/")
    return {"type_k": k, "type_v": v}


def _kv_short(spec: Spec) -> str:
    c = spec.context
    return c.type_k if c.type_k == c.type_v else f"{c.type_k}/{c.type_v}"


def _ngl_label(spec: Spec) -> str | None:
    return None if spec.model.device == "cpu" else f"ngl {spec.model.n_gpu_layers}"


def _graphs_label(spec: Spec) -> str | None:
    return "no-graphs" if spec.model.device != "cpu" and not spec.model.cuda_graphs else None


def _threads_label(spec: Spec) -> str | None:
    if spec.model.device != "cpu":
        return None
    n = spec.context.n_threads
    return f"t{n}" if n else "t-auto"


def _set(**pairs: str) -> Callable[[Any, Any, Any], None]:
    """An ``apply`` that copies spec attributes onto llama.cpp params of the same meaning."""
    def apply(lc: Any, params: Any, obj: Any) -> None:
        for param, attr in pairs.items():
            setattr(params, param, getattr(obj, attr))
    return apply


def _split_modes(v: list[str]) -> None:
    for name in v:
        if name not in SPLIT_MODES:
            raise ValueError(f"unknown split mode {name!r} (known: {', '.join(SPLIT_MODES)})")


def split_mode_name(mode: int) -> str:
    return next((n for n, i in SPLIT_MODES.items() if i == mode), str(mode))


def _split_label(spec: Spec) -> str | None:
    ms = spec.model
    if ms.device == "cpu" or ms.split_mode == SPLIT_MODES["layer"]:
        return None
    name = split_mode_name(ms.split_mode)
    return f"split {name} gpu{ms.main_gpu}" if name == "none" else f"split {name}"


def _tensor_splits(v: list[list[float] | None]) -> None:
    for split in v:
        if split is None:
            continue
        if not split or len(split) > MAX_SPLIT_DEVICES:
            raise ValueError(f"a tensor split lists 1 to {MAX_SPLIT_DEVICES} proportions, one "
                             f"per GPU (null: llama.cpp's split by free memory)")
        if not all(math.isfinite(x) for x in split) or not math.isfinite(sum(split)):
            raise ValueError(f"tensor split {split} must hold finite proportions")
        if any(x < 0 for x in split) or not sum(split) > 0:
            raise ValueError(f"tensor split {split} must hold proportions >= 0 that do not sum "
                             "to 0")


def _split_fields(v: list[float] | None) -> dict[str, Any]:
    return {"tensor_split": None if v is None else tuple(float(x) for x in v)}


def split_text(split: tuple[float, ...] | list[float] | None) -> str:
    """"3:1" for (3.0, 1.0); "auto" for None (by free memory)."""
    if split is None:
        return "auto"
    return ":".join(f"{x:g}" for x in split)


def _apply_tensor_split(lc: Any, params: Any, ms: Any) -> None:
    """llama_model_params.tensor_split is a borrowed ``const float *`` that llama.cpp reads
    ``llama_max_devices()`` floats from: the array is that long (or longer), zero-padded.
    Assigning it to the ctypes field keeps a reference in ``params`` (ctypes' ``_objects``),
    so it lives as long as the params do; the model also copies it at load."""
    if ms.tensor_split is None:
        return
    n = max(int(lc.llama_max_devices()), len(ms.tensor_split))
    array = (ctypes.c_float * n)(*ms.tensor_split)
    params.tensor_split = array


# A mixture of experts' expert weights (all experts of a layer in one 3-D tensor; common.h's
# LLM_FFN_EXPS_REGEX): the tensors llama-server's --n-cpu-moe keeps on the host. llama.cpp
# matches override patterns with std::regex (ECMAScript), where this syntax means what it
# means to Python's re (tuner.models.gguftensors.EXPERT_TENSOR).
EXPERT_PATTERN = r"\.ffn_(up|down|gate|gate_up)_(ch)?exps"


def layer_experts_pattern(il: int) -> str:
    """The override pattern of layer ``il``'s expert tensors (``blk.<il>.ffn_*_exps``; common.h's
    llm_ffn_block_regex): ``blk.1.`` never matches ``blk.10.``."""
    return rf"blk\.{il}" + EXPERT_PATTERN


class _BuftOverride(ctypes.Structure):
    """llama_model_tensor_buft_override (llama.h): the tensors a pattern matches go to a buffer
    type; llama.cpp reads the array up to the entry whose pattern is NULL."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


# The FFN matrices of one layer the setting ``ffn_on_host`` keeps in host memory, each value
# the regex group its tensors match, as llama.cpp's own fit places its partial layer
# (common/fit.cpp LAYER_FRACTION_ATTN, _UP, _GATE: attention alone on the GPU, then with up,
# then with up and gate), least on the GPU first. Its patterns, so of a mixture of experts'
# layer the experts, shared experts and router of those matrices too (``ffn_down_exps``,
# ``ffn_down_shexp``, ``ffn_gate_inp``); the fused gate_up moves with gate.
FFN_ON_HOST: dict[str, str] = {
    "gate+up+down": "ffn_(gate|up|gate_up|down)",
    "gate+down": "ffn_(gate|gate_up|down)",
    "down": "ffn_down",
}


def first_gpu_layer(n_layer: int, n_gpu_layers: int) -> int:
    """The first of ``n_layer`` repeating layers llama.cpp puts on the GPU for ``n_gpu_layers``
    (N of the n_layer + 1 with the output layer, the last N; -1 or more: all):
    ``i_gpu_start = n_layer + 1 - N``. ``n_layer`` means no repeating layer there (N 0 or 1:
    the output layer alone at most)."""
    total = n_layer + 1
    return total - (total if n_gpu_layers < 0 else min(n_gpu_layers, total))


def ffn_host_layer(n_layer: int, n_gpu_layers: int, n_cpu_moe: int) -> int | None:
    """The layer whose FFN matrices ``ffn_on_host`` keeps on the host, where the host's share
    ends, as llama.cpp's fit places its partial layer: the first repeating layer on the GPU
    (first_gpu_layer); with the experts of the first ``n_cpu_moe`` layers on the host, the
    next layer (layer ``n_cpu_moe``). None where there is none: no repeating layer on the GPU,
    or every layer's experts on the host."""
    start = first_gpu_layer(n_layer, n_gpu_layers)
    if n_cpu_moe > 0:
        return n_cpu_moe if start <= n_cpu_moe < n_layer else None
    return start if start < n_layer else None


def ffn_host_pattern(il: int, part: str) -> str:
    """The override pattern of layer ``il``'s FFN matrices ``part`` (a key of FFN_ON_HOST):
    llama.cpp's fit's (``get_overflow_pattern``), its trailing ``.*`` left out."""
    return rf"blk\.{il}\.{FFN_ON_HOST[part]}"


@dataclass(frozen=True)
class FfnOnHost:
    """The setting ffn_on_host resolved against a model: one layer's FFN matrices kept in host
    memory, ``part`` a key of FFN_ON_HOST."""

    layer: int
    part: str

    def text(self) -> str:
        """"14:gate+down", as the deployment's environment names it (TUNER_FFN_ON_HOST)."""
        return f"{self.layer}:{self.part}"

    def pattern(self) -> str:
        return ffn_host_pattern(self.layer, self.part)


# The spec field's type: none, or one of FFN_ON_HOST
FFN_PART_TYPE: Any = Literal.__getitem__(("", *FFN_ON_HOST))


def _ffn_parts(v: list[str]) -> None:
    for part in v:
        if part and part not in FFN_ON_HOST:
            raise ValueError(f"unknown ffn_on_host {part!r} (known: \"\" for none, "
                             f"{', '.join(FFN_ON_HOST)})")


# The override arrays handed to llama.cpp, which keeps the pointer in its model params: kept
# for the life of the process, one per list of patterns.
_OVERRIDES: dict[tuple[str, ...], Any] = {}
GGML_BACKEND_DEVICE_TYPE_CPU = 0  # enum ggml_backend_dev_type (ggml-backend.h)


def host_patterns(n_cpu_moe: int, ffn: FfnOnHost | None) -> tuple[str, ...]:
    """The tensor patterns a load keeps in host memory: the expert weights of the first
    ``n_cpu_moe`` layers, and the FFN matrices ``ffn`` (of a layer past them: no tensor
    matches two)."""
    out = tuple(layer_experts_pattern(il) for il in range(max(n_cpu_moe, 0)))
    return out + ((ffn.pattern(),) if ffn else ())


def apply_host_patterns(lc: Any, params: Any, patterns: tuple[str, ...]) -> None:
    """Keep the tensors ``patterns`` match in host memory, as llama-server's ``--n-cpu-moe``
    and ``-ot <pattern>=CPU`` do: one override per pattern to the CPU device's buffer type
    (the very pointer llama.cpp compares with ``ggml_backend_cpu_buffer_type()`` to also
    consider its repacked CPU types). ``lc``: the llama_cpp package or its ``llama_cpp``
    module (whose ``_lib``, libllama, resolves the ggml symbols it links). Nothing for none."""
    if not patterns:
        return
    array = _OVERRIDES.get(patterns)
    if array is None:
        lib = getattr(lc, "llama_cpp", lc)._lib
        by_type = lib.ggml_backend_dev_by_type
        by_type.restype, by_type.argtypes = ctypes.c_void_p, [ctypes.c_int]
        buft_of = lib.ggml_backend_dev_buffer_type
        buft_of.restype, buft_of.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
        cpu = by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
        if not cpu:
            raise RuntimeError("the llama.cpp library has no CPU backend device")
        buft = buft_of(cpu)
        array = (_BuftOverride * (len(patterns) + 1))()  # zeroed: the last is the NULL end
        for i, pattern in enumerate(patterns):
            array[i].pattern = pattern.encode()
            array[i].buft = buft
        _OVERRIDES[patterns] = array
    params.tensor_buft_overrides = ctypes.addressof(array)


def _apply_load_mode(lc: Any, params: Any, ms: Any) -> None:
    """llama_model_params.load_mode as llama-cpp-python's ``Llama(use_mmap=...)`` sets it
    (use_mlock off): mapped from the file, or read into the backend's host buffers (for a CUDA
    build pinned memory, which op offload uploads a prompt's host weights from faster)."""
    params.load_mode = lc.LLAMA_LOAD_MODE_MMAP if ms.use_mmap else lc.LLAMA_LOAD_MODE_NONE


def _apply_kv(lc: Any, params: Any, cs: Any) -> None:
    params.type_k = KV_TYPES[cs.type_k]
    params.type_v = KV_TYPES[cs.type_v]


def _apply_fa(lc: Any, params: Any, cs: Any) -> None:
    params.flash_attn_type = (lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if cs.flash_attn
                              else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED)


SETTINGS: tuple[Setting, ...] = (
    # Worker-level (ModelSettings): a new value needs a new worker. Grid order is table order.
    Setting(
        name="build", space_key="builds", level="model", value_type=str, default="installed",
        column="build", cell=lambda s: s.model.build, check=_build_names,
        label=lambda s: s.model.build, label_rank=0, keyed_at_default=True,
        field_default="default", deployed_by="LLAMA_CPP_LIB_PATH in the service's environment",
        unproven="the library's flags are checked against the build's variant instead",
        doc="the llama.cpp library build the worker loads (builds/*/ or the installed one)"),
    Setting(
        name="n_gpu_layers", level="model", value_type=int, default=-1, column="ngl",
        cell=lambda s: s.model.n_gpu_layers, numeric=True, label=_ngl_label, label_rank=50,
        bounds={"ge": -1},  # -1: every layer (llama.cpp reads any negative so; one spelling)
        apply=_set(n_gpu_layers="n_gpu_layers"), keyed_at_default=True,
        server=lambda s: {"n_gpu_layers": -1 if s.model.n_gpu_layers < 0
                          else s.model.n_gpu_layers},
        expect=lambda s: {"n_gpu_layers": s.model.n_gpu_layers},
        doc="layers offloaded to the GPU (-1: all)"),
    Setting(
        name="n_cpu_moe", level="model", value_type=int, default=0, column="cpu_moe",
        cell=lambda s: s.model.n_cpu_moe, numeric=True, shown=False, bounds={"ge": 0},
        label=lambda s: f"cpu-moe {s.model.n_cpu_moe}" if s.model.n_cpu_moe else None,
        label_rank=51,
        # Applied with ffn_on_host, whose layer needs the model's (tuner/worker/main.py _load).
        # llama_cpp.server's settings have no field for it: the deployment's environment
        # names the count (tuner.deploy.service.service_env), and tuner's launcher runs the
        # server with it (tuner/deploy/serverlaunch.py); llama-server takes --n-cpu-moe.
        deployed_by="the service's environment (TUNER_N_CPU_MOE), read by python -m "
                    "tuner.deploy.serverlaunch",
        expect=lambda s: {"n_cpu_moe": s.model.n_cpu_moe},
        doc="the first N layers keep their mixture-of-experts weights (*_exps) in host memory "
            "while the rest of every layer is on the GPU (llama-server's --n-cpu-moe)"),
    Setting(
        name="ffn_on_host", level="model", value_type=str, default="", column="ffn_host",
        field_type=FFN_PART_TYPE,
        cell=lambda s: s.model.ffn_on_host or "-", shown=False, check=_ffn_parts,
        label=lambda s: f"ffn-host {s.model.ffn_on_host}" if s.model.ffn_on_host else None,
        label_rank=52,
        # Applied by the worker with the model's layer count (tuner/worker/main.py _load); the
        # deployment's environment names the layer and the matrices (TUNER_FFN_ON_HOST, read by
        # tuner's launcher), llama-server takes -ot <pattern>=CPU.
        deployed_by="the service's environment (TUNER_FFN_ON_HOST), read by python -m "
                    "tuner.deploy.serverlaunch",
        expect=lambda s: {"ffn_on_host": s.model.ffn_on_host},
        doc="FFN matrices kept in host memory of the layer where the host's share ends (the "
            "first GPU layer; with n_cpu_moe K, layer K): gate+up+down (its attention alone "
            "on the GPU), gate+down, down (empty: none), as llama.cpp's fit places a partial "
            "layer"),
    Setting(
        name="use_mmap", level="model", value_type=bool, default=True, column="mmap",
        cell=lambda s: _on(s.model.use_mmap), shown=False, label_rank=53,
        label=lambda s: None if s.model.use_mmap else "no-mmap", apply=_apply_load_mode,
        server=lambda s: {"use_mmap": bool(s.model.use_mmap)},
        expect=lambda s: {"load_mode": "mmap" if s.model.use_mmap else "none"},
        doc="map the model file (llama.cpp's load mode mmap) or read it into host buffers "
            "(none: pinned memory on a CUDA build, where the host's layers upload faster "
            "for a prompt); llama_cpp.server's use_mmap, llama-server's -lm"),
    Setting(
        name="cuda_graphs", level="model", value_type=bool, default=True, column="graphs",
        cell=lambda s: _on(s.model.cuda_graphs), label=_graphs_label, label_rank=60,
        shown=False, keyed_at_default=True,
        env=lambda ms: {} if ms.cuda_graphs else {"GGML_CUDA_DISABLE_GRAPHS": "1"},
        unproven="the load log does not say whether CUDA graphs ran",
        doc="CUDA graphs (off: GGML_CUDA_DISABLE_GRAPHS=1 in the worker and the service)"),
    Setting(
        name="split_mode", space_key="split_modes", level="model", value_type=str,
        default="layer", field_type=int, column="split",
        to_fields=lambda v: {"split_mode": SPLIT_MODES[v]},
        from_fields=lambda ms: split_mode_name(ms.split_mode),
        cell=lambda s: split_mode_name(s.model.split_mode), check=_split_modes, shown=False,
        bounds={"ge": 0, "le": 3}, label=_split_label, label_rank=55,
        # In every key since the start (at 1: layer); its space list is new, so a space that
        # does not list it keeps its id.
        keyed_at_default=True, spaced_at_default=False, apply=_set(split_mode="split_mode"),
        server=lambda s: {"split_mode": s.model.split_mode},
        expect=lambda s: {"split_mode": s.model.split_mode, "main_gpu": s.model.main_gpu},
        doc="how layers are split across GPUs: none (all on main_gpu), layer (whole layers "
            "per GPU), row (each matrix split by rows); llama_split_mode 0/1/2"),
    Setting(
        name="tensor_split", space_key="tensor_splits", level="model",
        value_type=list[float] | None, default=None, field_type=tuple[float, ...] | None,
        column="tensor_split", to_fields=_split_fields,
        from_fields=lambda ms: None if ms.tensor_split is None else list(ms.tensor_split),
        cell=lambda s: split_text(s.model.tensor_split), check=_tensor_splits, shown=False,
        label=lambda s: (None if s.model.tensor_split is None
                         else f"ts {split_text(s.model.tensor_split)}"), label_rank=56,
        apply=_apply_tensor_split,
        server=lambda s: {"tensor_split": None if s.model.tensor_split is None
                          else list(s.model.tensor_split)},
        expect=lambda s: {"tensor_split": s.model.tensor_split},
        doc="share of the layers (row mode: of each matrix) per GPU, e.g. [3, 1] (null: "
            "llama.cpp's split by free memory)"),
    Setting(
        name="main_gpu", level="model", value_type=int, default=0, column="main_gpu",
        cell=lambda s: s.model.main_gpu, numeric=True, in_space=False, shown=False,
        bounds={"ge": 0},
        keyed_at_default=True, apply=_set(main_gpu="main_gpu"),
        server=lambda s: {"main_gpu": s.model.main_gpu},
        unproven="proven with split_mode: with none every layer must be on this GPU",
        doc="the GPU that holds the model with split mode none"),
    # Context-level (ContextSettings): a new context on the loaded model.
    Setting(
        name="n_batch", level="context", value_type=int, default=512, column="n_batch",
        cell=lambda s: s.context.n_batch, numeric=True, changes_ops=False,
        bounds={"ge": 1, "le": MAX_BATCH},
        label=lambda s: f"b{s.context.n_batch}/u{s.context.n_ubatch}", label_rank=10,
        apply=_set(n_batch="n_batch"), keyed_at_default=True,
        server=lambda s: {"n_batch": s.context.n_batch},
        expect=lambda s: {"n_batch": s.context.n_batch},
        doc="logical batch: tokens per llama_decode call"),
    Setting(
        name="n_ubatch", level="context", value_type=int, default=512, column="n_ubatch",
        cell=lambda s: s.context.n_ubatch, numeric=True,
        bounds={"ge": 1, "le": MAX_BATCH},
        apply=_set(n_ubatch="n_ubatch"), keyed_at_default=True,
        server=lambda s: {"n_ubatch": s.context.n_ubatch},
        expect=lambda s: {"n_ubatch": s.context.n_ubatch},
        doc="physical batch: tokens per graph computation"),
    Setting(
        name="flash_attn", level="context", value_type=bool, default=False, column="fa",
        cell=lambda s: _on(s.context.flash_attn), label_rank=20,
        label=lambda s: "fa" if s.context.flash_attn else "nofa",
        apply=_apply_fa, keyed_at_default=True,
        server=lambda s: {"flash_attn": bool(s.context.flash_attn)},
        expect=lambda s: {"flash_attn": s.context.flash_attn},
        doc="flash attention (llama_context_params.flash_attn_type)"),
    Setting(
        name="kv_cache", level="context", value_type=str, default="f16/f16", column="kv",
        fields=("type_k", "type_v"), to_fields=_kv_fields,
        from_fields=lambda cs: f"{cs.type_k}/{cs.type_v}",
        cell=lambda s: f"{s.context.type_k}/{s.context.type_v}", value=_kv_short,
        check=_kv_pairs, label=lambda s: f"kv {s.context.type_k}/{s.context.type_v}",
        label_rank=30, apply=_apply_kv, keyed_at_default=True,
        server=lambda s: {"type_k": KV_TYPES[s.context.type_k],
                          "type_v": KV_TYPES[s.context.type_v]},
        expect=lambda s: {"type_k": s.context.type_k, "type_v": s.context.type_v},
        doc="K/V cache types 'K/V' (ggml type names; a quantized V needs flash attention)"),
    Setting(
        name="n_threads", level="context", value_type=int | None, default=None,
        column="threads", cell=lambda s: s.context.n_threads if s.context.n_threads is not None
        else "auto", numeric=True, check=_threads, label=_threads_label, label_rank=40,
        bounds={"ge": 1, "le": MAX_THREADS},
        keyed_at_default=True, changes_ops=False,
        # Set by the worker (its own default when None); the server gets the count measured.
        server=lambda s: {}, unproven="the worker records the thread count it ran on",
        doc="CPU threads for prompt and generation (null: one per physical core)"),
    Setting(
        name="op_offload", level="context", value_type=bool, default=True, column="op_offload",
        cell=lambda s: _on(s.context.op_offload), label_rank=70,
        label=lambda s: None if s.context.op_offload else "no-op-offload",
        apply=_set(op_offload="op_offload"), shown=False, server_runs=True,
        unproven="llama.cpp prints no line for it; where operations ran is the op proof's",
        doc="offload operations on host-resident weights to the GPU (llama.cpp's default on; "
            "llama_cpp.server has no field for it, so only on can be deployed)"),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
SPACE_SETTINGS: tuple[Setting, ...] = tuple(s for s in SETTINGS if s.in_space)
BY_SPACE_KEY: dict[str, Setting] = {s.key: s for s in SPACE_SETTINGS}


def of_level(level: Level) -> tuple[Setting, ...]:
    return tuple(s for s in SETTINGS if s.level == level)


def spec_fields(level: Level) -> set[str]:
    """The ModelSettings / ContextSettings attributes the table declares."""
    return {f for s in of_level(level) for f in s.names}


def setting_of(flat_field: str) -> str:
    """The setting a flat spec field ("context.type_k") belongs to ("kv_cache"); a field that no
    setting declares stands for itself."""
    level, _, field = flat_field.partition(".")
    return next((s.name for s in SETTINGS if s.level == level and field in s.names), flat_field)


def key_dump(dump: dict[str, Any]) -> dict[str, Any]:
    """A TrialSpec dump for its key: settings added after keys were first stored are left out
    at their default, so an older record's key is still the key of the same settings."""
    out = {"model": dict(dump["model"]), "context": dict(dump["context"])}
    for s, default in _left_out_at_default():
        part = out[s.level]
        if all(f in part for f in s.names) and default == {f: part[f] for f in s.names}:
            for f in s.names:
                del part[f]
    return out


@functools.cache
def _left_out_at_default() -> tuple[tuple[Setting, dict[str, Any]], ...]:
    """The settings a key leaves out at their default, with that default's fields (computed
    once: a plan of 100,000 settings computes as many keys)."""
    return tuple((s, s.fields_of(s.default)) for s in SETTINGS if not s.keyed_at_default)


def space_dump(dump: dict[str, Any]) -> dict[str, Any]:
    """A Space dump for its id: a newer setting's list left at ``[default]`` is left out."""
    return {k: v for k, v in dump.items()
            if not ((s := BY_SPACE_KEY.get(k)) and not s.in_space_id_at_default
                    and v == [s.default])}



def label(spec: Spec) -> str:
    parts = [(s.label_rank, s.label(spec)) for s in SETTINGS if s.label]
    return " ".join(p for _, p in sorted(parts, key=lambda x: x[0]) if p)


def apply_model(lc: Any, params: Any, ms: Any) -> None:
    for s in of_level("model"):
        if s.apply:
            s.apply(lc, params, ms)


def apply_context(lc: Any, params: Any, cs: Any) -> None:
    for s in of_level("context"):
        if s.apply:
            s.apply(lc, params, cs)


def environment(ms: Any) -> dict[str, str]:
    """The environment variables the model-level settings ask of a worker or a service."""
    env: dict[str, str] = {}
    for s in of_level("model"):
        if s.env:
            env.update(s.env(ms))
    return env


def server_fields(spec: Spec) -> dict[str, Any]:
    """The settings as llama_cpp.server's ModelSettings fields (table order)."""
    out: dict[str, Any] = {}
    for s in SETTINGS:
        if s.server:
            out.update(s.server(spec))
    return out


def undeployable(spec: Spec) -> list[str]:
    """Why llama_cpp.server could not run what this spec measured (empty: it can)."""
    return [why for s in SETTINGS if (why := s.deployable(spec))]


def expectation(spec: Spec, workload: ContextSize | None = None) -> dict[str, Any]:
    """The placement ``Expectation`` fields the spec's settings (and the workload's context
    size) set: what the load log must show."""
    out: dict[str, Any] = {"device": spec.model.device}
    for s in SETTINGS:
        if s.expect:
            out.update(s.expect(spec))
    if workload is not None:
        out["n_ctx"] = workload.n_ctx
    return out


def optional_columns(specs: list[Spec]) -> list[Setting]:
    """Settings whose report column is shown only when some trial is off their default."""
    return [s for s in SETTINGS if not s.shown
            and any(s.of_spec(sp) != s.default for sp in specs)]


def report_cells(spec: Spec, extra: list[Setting] | tuple[Setting, ...] = ()
                 ) -> dict[str, Any]:
    """The settings' report cells: every always-shown column, then ``extra``'s."""
    return {s.column: s.cell(spec) for s in SETTINGS if s.shown or s in extra}

