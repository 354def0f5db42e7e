"""What a trial asks for: the settings that need a fresh worker, the settings a loaded model can
change per context, and the workload every trial is measured on."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from tuner import settings
from tuner.settings import KV_TYPES, UNQUANTIZED_KV

__all__ = ["KV_TYPES", "UNQUANTIZED_KV", "ContextSettings", "Device", "Frozen",
           "ModelSettings", "TrialSpec", "Workload"]

Device = Literal["cuda", "cpu"]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


def _declared_fields(level: settings.Level) -> dict[str, Any]:
    """The spec fields of the settings of ``level``: type, default and bounds as declared."""
    out: dict[str, Any] = {}
    for s in settings.of_level(level):
        defaults = s.fields_of(s.spec_default)
        for name in s.names:
            bounds: dict[str, Any] = s.bounds or {}  # ge/le/gt/lt for Field
            out[name] = (s.field_type or s.value_type,
                         Field(default=defaults[name], description=s.doc, **bounds))
    return out


class _ModelBase(Frozen):
    """Settings fixed for the life of a worker: the library build it loads, the process
    environment, and how the model is placed. Trials sharing these share one worker. The
    device is the sweep's; every other field is a setting of level "model" in
    ``tuner.settings``."""

    device: Device = "cuda"

    @model_validator(mode="before")
    @classmethod
    def _cpu_has_no_layers(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("device") == "cpu":
            return {**data, "n_gpu_layers": 0, "cuda_graphs": True, "ffn_on_host": ""}
        return data

    @model_validator(mode="after")
    def _ffn_on_host_has_its_layer(self) -> Any:
        m: Any = self
        if not m.ffn_on_host:
            return self
        if 0 <= m.n_gpu_layers <= 1:
            raise ValueError(f"ffn_on_host {m.ffn_on_host!r} needs a repeating layer on the GPU "
                             f"(n_gpu_layers -1 or 2 and up, not {m.n_gpu_layers})")
        return self

    def worker_key(self) -> str:
        return _digest(self.model_dump())


class _ContextBase(Frozen):
    """Settings a loaded model can change by creating a new context: the settings of level
    "context" in ``tuner.settings``."""

    @model_validator(mode="after")
    def _consistent(self) -> Any:
        c: Any = self
        if c.n_ubatch > c.n_batch:
            raise ValueError(f"n_ubatch {c.n_ubatch} is above n_batch {c.n_batch}")
        for name in (c.type_k, c.type_v):
            if name not in KV_TYPES:
                raise ValueError(
                    f"unknown KV cache type {name!r} (known: {', '.join(sorted(KV_TYPES))})"
                )
        if c.type_v not in UNQUANTIZED_KV and not c.flash_attn:
            raise ValueError(
                f"a quantized V cache ({c.type_v}) needs flash attention in llama.cpp"
            )
        return self


ModelSettings: Any = create_model("ModelSettings", __base__=_ModelBase,
                                  __doc__=_ModelBase.__doc__, __module__=__name__,
                                  **_declared_fields("model"))
ContextSettings: Any = create_model("ContextSettings", __base__=_ContextBase,
                                    __doc__=_ContextBase.__doc__, __module__=__name__,
                                    **_declared_fields("context"))


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
            p, g = data.get("prompt_tokens", 512), data.get("gen_tokens", 128)
            if isinstance(p, int) and isinstance(g, int):  # else the fields say what is wrong
                return {**data, "n_ctx": p + g}
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


_KEY_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))  # one, not one per key


def _digest(data: object) -> str:
    return hashlib.sha256(_KEY_JSON.encode(data).encode()).hexdigest()[:16]
