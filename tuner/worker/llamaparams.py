"""What llama-cpp-python's ``Llama()`` loads with beyond its own options: the settings its
constructor (and so llama_cpp.server's config) has no parameter for, applied to the model
params every ``Llama()`` of the process starts from, and the tensors a trial's worker keeps in
host memory. Used where a model must load as the trial's worker loaded it: the worker itself
(tuner/worker/main.py), the served phase's worker (tuner/worker/served.py) and the deployed
server's launcher (tuner/deploy/serverlaunch.py)."""

from __future__ import annotations

import os
from typing import Any

from tuner.models.gguftensors import block_count
from tuner.settings import FfnOnHost, apply_host_patterns, ffn_host_layer, host_patterns


def ffn_on_host_of(model_path: str | os.PathLike[str], ms: Any) -> FfnOnHost | None:
    """The layer and FFN matrices the setting ``ffn_on_host`` of the ModelSettings ``ms``
    keeps on the host for this model (None for none); the layer count read from the model's
    header (a bad file: BadModel; no count: ValueError)."""
    if not ms.ffn_on_host:
        return None
    layer = ffn_host_layer(block_count(model_path), ms.n_gpu_layers, ms.n_cpu_moe)
    return None if layer is None else FfnOnHost(layer=layer, part=ms.ffn_on_host)


def hold_on_host(n_cpu_moe: int, ffn: FfnOnHost | None) -> None:
    """Make every later ``Llama()`` of this process keep in host memory the expert weights of
    the first ``n_cpu_moe`` layers (the setting ``n_cpu_moe``) and the FFN matrices ``ffn``
    (the setting ``ffn_on_host``): ``Llama()`` takes its model params from
    ``llama_model_default_params()`` and never sets their tensor overrides, so the overrides
    are set on what that function returns. Nothing changes for neither."""
    patterns = host_patterns(n_cpu_moe, ffn)
    if not patterns:
        return
    import llama_cpp.llama_cpp as lc  # noqa: PLC0415 - after the build's environment is set

    original: Any = getattr(lc.llama_model_default_params, "tuner_original",
                            lc.llama_model_default_params)

    def with_tensors_on_host() -> Any:
        params = original()
        apply_host_patterns(lc, params, patterns)
        return params

    with_tensors_on_host.tuner_original = original  # type: ignore[attr-defined]
    lc.llama_model_default_params = with_tensors_on_host
