"""The typed facts of a llama.cpp load log and what a trial asked for, apart from the code that
reads them (tuner/evidence/placement.py parses and verifies, tuner/evidence/gpusplit.py reads a
split across GPUs): both import these, neither the other's types."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tuner.builds.buildinfo import BuildFlags
from tuner.specs import Frozen


class DeviceHolding(BaseModel):
    """What one device holds: layers, and its model / KV / compute buffers in MiB."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    layers: int = 0
    kv_layers: int = 0
    model_mib: float = 0.0
    kv_mib: float = 0.0
    compute_mib: float = 0.0


class PlacementEvidence(Frozen):
    """What one captured llama.cpp log says about where a model and its context live."""

    cuda_devices: list[str] = Field(default_factory=list)
    # The devices the model may use ("using device CUDA0 (...)"): every GPU with split mode
    # layer/row, main_gpu's alone with none (tuner.evidence.gpusplit reads what each one holds).
    model_devices: list[str] = Field(default_factory=list)
    # What each CUDA device holds: layers, KV layers, model / KV / compute buffer MiB.
    per_gpu: dict[str, DeviceHolding] = Field(default_factory=dict)
    layer_devices: dict[int, str] = Field(default_factory=dict)
    offloaded_layers: int | None = None
    total_layers: int | None = None
    kv_layer_devices: dict[int, str] = Field(default_factory=dict)
    model_buffers_mib: dict[str, float] = Field(default_factory=dict)
    kv_buffers_mib: dict[str, float] = Field(default_factory=dict)
    compute_buffers_mib: dict[str, float] = Field(default_factory=dict)
    # A recurrent model's (or a hybrid's recurrent layers') state ("RS buffer size"), per device
    state_buffers_mib: dict[str, float] = Field(default_factory=dict)
    # Tensors a buffer-type override placed ("tensor blk.0.ffn_up_exps.weight (...) buffer
    # type overridden to CPU"): name -> buffer type
    overridden: dict[str, str] = Field(default_factory=dict)
    flash_attn: str | None = None
    # "loading model tensors, ... (load_mode = mmap)": how the weights were read (None: the log
    # does not say, as releases before the load modes)
    load_mode: str | None = None
    n_ctx: int | None = None
    n_batch: int | None = None
    n_ubatch: int | None = None
    kv_types: tuple[str, str] | None = None
    build: BuildFlags | None = None
    errors: list[str] = Field(default_factory=list)
    is_load_log: bool = False


class Expectation(Frozen):
    """What a trial asked for. ``n_gpu_layers`` -1 (or any value at or above the model's layer
    count) means every layer; ``build`` is a variant name as ``variant_of`` gives it."""

    device: Literal["cuda", "cpu"]
    n_gpu_layers: int = -1
    # How layers are split across GPUs (tuner.evidence.gpusplit): llama_split_mode (0 none: every GPU
    # layer on CUDA<main_gpu>; 1 layer / 2 row: on more than one GPU when several are used),
    # and the split's proportions (None: by free memory).
    split_mode: int = 1
    main_gpu: int = 0
    # The first layers whose expert weights stay in host memory (0: no tensor is overridden)
    n_cpu_moe: int = 0
    # The FFN matrices of the first GPU layer kept in host memory (tuner.settings.FFN_ON_HOST;
    # empty: none)
    ffn_on_host: str = ""
    # llama.cpp's load mode the log must name ("mmap", "none"; None: not checked)
    load_mode: str | None = None
    tensor_split: tuple[float, ...] | None = None
    build: str | None = None
    type_k: str | None = None
    type_v: str | None = None
    flash_attn: bool | None = None
    # The context as asked (None: not checked). llama.cpp clamps n_batch to the context size
    # asked and n_ubatch to n_batch, and rounds the context size up (to a multiple of 256 in
    # this release), so the log shows n_ctx >= asked, n_batch = min(asked, n_ctx asked), and
    # n_ubatch = min(asked, n_batch shown).
    n_ctx: int | None = None
    n_batch: int | None = None
    n_ubatch: int | None = None
