"""The parameter count of a GGUF model, read from its header's tensor table (shapes only, no
weights), for the roofline's FLOPs per token. Reads through the bounded cursor of
``tuner.models.ggufheader`` and the header checks of ``tuner.models.modelcheck``, so a damaged file is a
one-line ``BadModel``, never a huge read."""

from __future__ import annotations

from pathlib import Path

from tuner.models.ggufheader import _fail, _Header, _open, _q
from tuner.models.gguftensors import EXPERT_TENSOR, experts_used_share
from tuner.models.modelcheck import MAX_DIMS, MAX_NAME_BYTES, _counts, _key_values, _magic_and_version
from tuner.specs import Frozen


class ModelShape(Frozen):
    path: str
    size_bytes: int
    architecture: str | None
    parameters: int  # elements of every tensor
    matmul_parameters: int  # without the token embedding table when a separate output exists
    n_layers: int | None
    expert_parameters: int = 0  # of which in a mixture of experts' expert tensors
    experts_used_share: float = 1.0  # the share of them a token uses (used / count)

    @property
    def active_matmul_parameters(self) -> int:
        """The matrix-multiply parameters one token goes through: a mixture of experts' unused
        experts left out."""
        unused = round(self.expert_parameters * (1.0 - self.experts_used_share))
        return self.matmul_parameters - unused


def read_shape(path: str | Path) -> ModelShape:
    """Count the elements of every tensor listed in the header of the GGUF at ``path``."""
    path = Path(path).absolute()
    f, size = _open(path)
    with f:
        h = _Header(f, path, size)
        _magic_and_version(h)
        n_tensors, n_kv = _counts(h)
        values = _key_values(h, n_kv)
        total = embd = experts = 0
        has_output = False
        for i in range(n_tensors):
            name = h.string(f"the name of tensor #{i}", MAX_NAME_BYTES) or ""
            n_dims = h.u32(f"the dimension count of tensor {_q(name)}")
            if n_dims > MAX_DIMS:
                raise _fail(path, f"tensor {_q(name)} has {n_dims} dimensions")
            n = 1
            for _ in range(n_dims):
                n *= max(0, int(h.unpack("<q", f"the shape of tensor {_q(name)}")))
            h.u32(f"the type of tensor {_q(name)}")
            h.u64(f"the data offset of tensor {_q(name)}")
            total += n
            experts += n if EXPERT_TENSOR.search(name) else 0
            if name == "token_embd.weight":
                embd = n
            has_output = has_output or name == "output.weight"
    arch = values.get("general.architecture")
    arch = arch if isinstance(arch, str) else None
    layers = values.get(f"{arch}.block_count")
    share = experts_used_share(values.get(f"{arch}.expert_count"),
                               values.get(f"{arch}.expert_used_count"))
    return ModelShape(
        path=str(path), size_bytes=size, architecture=arch, parameters=total,
        matmul_parameters=total - embd if has_output else total,
        n_layers=layers if isinstance(layers, int) and not isinstance(layers, bool) else None,
        expert_parameters=experts, experts_used_share=share,
    )
