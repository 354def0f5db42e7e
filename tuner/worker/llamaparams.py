"""What llama-cpp-python's ``Llama()`` loads with beyond its own options: the settings its
constructor (and so llama_cpp.server's config) has no parameter for, applied to the model
params every ``Llama()`` of the process starts from. Used where a ``Llama()`` must load a
trial's model as the trial's worker did: the served phase's worker (tuner/worker/served.py)
and the deployed server's launcher (tuner/deploy/serverlaunch.py)."""

from __future__ import annotations

from typing import Any

from tuner.settings import apply_cpu_moe


def hold_experts_on_host(n_layers: int) -> None:
    """Make every later ``Llama()`` of this process keep the expert weights of the first
    ``n_layers`` layers in host memory (the setting ``n_cpu_moe``): ``Llama()`` takes its model
    params from ``llama_model_default_params()`` and never sets their tensor overrides, so the
    overrides are set on what that function returns. Nothing changes for 0."""
    if n_layers <= 0:
        return
    import llama_cpp.llama_cpp as lc  # noqa: PLC0415 - after the build's environment is set

    original: Any = getattr(lc.llama_model_default_params, "tuner_original",
                            lc.llama_model_default_params)

    def with_experts_on_host() -> Any:
        params = original()
        apply_cpu_moe(lc, params, n_layers)
        return params

    with_experts_on_host.tuner_original = original  # type: ignore[attr-defined]
    lc.llama_model_default_params = with_experts_on_host
