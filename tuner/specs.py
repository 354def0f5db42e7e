"""What a trial asks for: the settings that need a fresh worker, the settings a loaded model can
change per context, and the workload every trial is measured on."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuner import settings
from tuner.settings import KV_TYPES, UNQUANTIZED_KV

__all__ = ["KV_TYPES", "UNQUANTIZED_KV", "ContextSettings", "Device", "Frozen",
           "ModelSettings", "TrialSpec", "Workload"]

Device = Literal["cuda", "cpu"]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSettings(Frozen):
    """Settings fixed for the life of a worker: the library build it loads, the process
    environment, and how the model is placed. Trials sharing these share one worker. Each
    field but ``device`` is declared in ``tuner.settings`` (level "model"); a test checks."""

    build: str = "default"
    device: Device = "cuda"
    n_gpu_layers: int = -1
    split_mode: int = Field(default=1, ge=0, le=3)
    main_gpu: int = Field(default=0, ge=0)
    cuda_graphs: bool = True

    @model_validator(mode="before")
    @classmethod
    def _cpu_has_no_layers(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("device") == "cpu":
            return {**data, "n_gpu_layers": 0, "cuda_graphs": True}
        return data

    def worker_key(self) -> str:
        return _digest(self.model_dump())


class ContextSettings(Frozen):
    """Settings a loaded model can change by creating a new context. Each field is declared in
    ``tuner.settings`` (level "context"), defaults included; a test checks."""

    n_batch: int = Field(default=512, ge=1)
    n_ubatch: int = Field(default=512, ge=1)
    flash_attn: bool = False
    type_k: str = "f16"
    type_v: str = "f16"
    n_threads: int | None = Field(default=None, ge=1)
    op_offload: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> ContextSettings:
        if self.n_ubatch > self.n_batch:
            raise ValueError(f"n_ubatch {self.n_ubatch} is above n_batch {self.n_batch}")
        for name in (self.type_k, self.type_v):
            if name not in KV_TYPES:
                raise ValueError(
                    f"unknown KV cache type {name!r} (known: {', '.join(sorted(KV_TYPES))})"
                )
        if self.type_v not in UNQUANTIZED_KV and not self.flash_attn:
            raise ValueError(
                f"a quantized V cache ({self.type_v}) needs flash attention in llama.cpp"
            )
        return self


class TrialSpec(Frozen):
    model: ModelSettings
    context: ContextSettings

    def key(self) -> str:
        """Stable identity of the settings, used to find a trial already done on resume."""
        return _digest(settings.key_dump(self.model_dump()))

    def label(self) -> str:
        return settings.label(self)


class Workload(Frozen):
    """A request of the production shape: a prompt of P tokens, then G generated tokens at that
    depth, in a context of n_ctx. Measured with ``warmup`` discarded runs and ``repetitions``."""

    prompt_tokens: int = Field(default=512, ge=0)
    gen_tokens: int = Field(default=128, ge=0)
    n_ctx: int = Field(default=0, ge=0)
    repetitions: int = Field(default=3, ge=1)
    warmup: int = Field(default=1, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _default_ctx(cls, data: object) -> object:
        if isinstance(data, dict) and not data.get("n_ctx"):
            return {**data, "n_ctx": data.get("prompt_tokens", 512) + data.get("gen_tokens", 128)}
        return data

    @model_validator(mode="after")
    def _fits(self) -> Workload:
        if self.prompt_tokens + self.gen_tokens == 0:
            raise ValueError("the workload needs prompt or generated tokens")
        if self.prompt_tokens + self.gen_tokens > self.n_ctx:
            raise ValueError(
                f"prompt {self.prompt_tokens} + generated {self.gen_tokens} tokens do not fit "
                f"in n_ctx {self.n_ctx}"
            )
        return self


def _digest(data: object) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
