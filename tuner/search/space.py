"""Search spaces: which values each setting may take, read from YAML, and the grid of valid
trial specs they make once the builds' compiled flash-attention kernels are known."""

from __future__ import annotations

import functools
import itertools
import operator
import os
import types
from collections.abc import Callable
from pathlib import Path
from types import GenericAlias
from typing import TYPE_CHECKING, Any, TypeAlias, get_args

import yaml
from pydantic import (
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    create_model,
    field_validator,
)

from tuner import settings
from tuner.errors import BadInput
from tuner.machine.cpus import default_threads
from tuner.machine.yamlread import DuplicateKey, load_unique
from tuner.settings import SPACE_SETTINGS, UNQUANTIZED_KV, Setting
from tuner.specs import (
    ContextSettings,
    Device,
    Frozen,
    ModelSettings,
    TrialSpec,
    Workload,
    _digest,
)

# Above this many combinations the grid is refused: planning it would take minutes and running
# it years. Split the space into several --space files (one study each) instead.
MAX_COMBINATIONS = 250_000

# llama-cpp-python's own defaults (Llama(): n_batch 512, n_ubatch 512, no flash attention,
# f16 cache) with every layer on the GPU: the baseline every sweep measures first. Every
# context setting at its declared default (tuner/settings.py).
BASELINE = ContextSettings.model_validate(
    {k: v for s in settings.of_level("context") for k, v in s.fields_of(s.default).items()})


_BASELINE_DUMP = BASELINE.model_dump(exclude={"n_threads"})


def is_baseline_context(cs: ContextSettings) -> bool:
    """The baseline's settings, whatever the thread count (a dump compared: the grid asks it
    of every setting of spaces up to 250,000)."""
    return cs.model_dump(exclude={"n_threads"}) == _BASELINE_DUMP


class _SpaceBase(Frozen):
    """Lists of values per setting; the grid is their product minus invalid combinations.
    The fields are the settings of ``tuner.settings`` that a space may list."""

    if TYPE_CHECKING:  # the fields are made at run time (create_model below)
        def __init__(self, **fields: list[Any]) -> None: ...
        def __getattr__(self, name: str) -> list[Any]: ...

    def space_id(self) -> str:
        """Stable identity of the space, kept on every trial planned under it."""
        return _digest(settings.space_dump(self.model_dump()))[:12]

    def combinations(self) -> int:
        """How many settings the product of the lists holds, before invalid ones are dropped."""
        n = 1
        for name in type(self).model_fields:
            n *= len(getattr(self, name))
        return n

    def values(self, s: Setting) -> list:
        return getattr(self, s.key)


def _validator(s: Setting):  # noqa: ANN202 - a pydantic validator
    def check(cls: type, v: list) -> list:
        if not v:
            raise ValueError("must list at least one value")
        if s.bounds:
            out = next((x for x in v if isinstance(x, int) and not s.within_bounds(x)), None)
            if out is not None:
                raise ValueError(f"{out} is outside the range of {s.key}: "
                                 f"{s.bounds_text()} ({s.doc})")
        if s.check:
            s.check(v)
        return v
    return field_validator(s.key)(check)


def _strict(t: Any) -> Any:
    """A value type whose numbers and booleans are taken only as such: ``true`` is not the
    number 1, ``"512"`` not 512, 1 not ``true``."""
    if t is int:
        return StrictInt
    if t is bool:
        return StrictBool
    args = get_args(t)
    if isinstance(t, types.UnionType) and args:
        return functools.reduce(operator.or_, (_strict(a) for a in args))
    return t


# One list field per setting: (list[value type], default [the setting's default]).
_FIELDS: dict[str, Any] = {
    s.key: (GenericAlias(list, (_strict(s.value_type),)),
            Field(default_factory=lambda d=s.default: [d], description=s.doc))
    for s in SPACE_SETTINGS}
_SpaceModel = create_model(
    "Space", __base__=_SpaceBase, __doc__=_SpaceBase.__doc__,
    __validators__={f"_check_{s.key}": _validator(s) for s in SPACE_SETTINGS},
    **_FIELDS,
)
if TYPE_CHECKING:  # the fields are made at run time; type checkers see the base's methods
    Space: TypeAlias = _SpaceBase
else:
    Space = _SpaceModel


def thread_counts() -> list[int]:
    """The CPU thread counts a space with a host share searches: llama.cpp's own default (one
    per physical core, what a trial without a count runs) first, so that the first trials run
    at it, then every CPU and half of them."""
    cores = os.cpu_count() or 1
    first = default_threads()
    return [first, *sorted({cores, max(1, cores // 2)} - {first}, reverse=True)]


# The cache types the built-in space searches (q8_0 frees room).
DEFAULT_KV_CACHES = ("f16/f16", "q8_0/q8_0")


def default_space(device: Device, builds: list[str], gpu_layers: tuple[int, ...] = (),
                  attention: bool = True, experts: tuple[int, ...] = (),
                  parts: tuple[str, ...] = ()) -> Space:
    """The built-in space. ``gpu_layers``: the layer counts of a model that does not fit at
    full offload (tuner/search/offload.py): the space searches them, with the cache types
    (q8_0 frees room), n_ubatch, flash attention and the CPU threads that compute the rest.
    ``attention`` False: no layer keeps a KV cache (a recurrent model such as Mamba): the cache
    type and flash attention change nothing there, so each keeps its default alone.
    ``experts``: a mixture of experts' n_cpu_moe counts, each with every layer on the GPU
    (offload.keep_fitting pairs them so). ``parts``: the ffn_on_host values, each where the
    whole layer stops fitting (offload.keep_fitting keeps them there)."""
    space = _default_space(device, builds, gpu_layers)
    if experts and device == "cuda" and gpu_layers:
        space = space.model_copy(update={"n_gpu_layers": [-1, *space.n_gpu_layers],
                                         "n_cpu_moe": [0, *experts]})
    if parts and device == "cuda" and gpu_layers:
        space = space.model_copy(update={"ffn_on_host": ["", *parts]})
    if attention:
        return space
    return space.model_copy(update={"kv_cache": [DEFAULT_KV_CACHES[0]], "flash_attn": [False]})


def _default_space(device: Device, builds: list[str], gpu_layers: tuple[int, ...]) -> Space:
    threads = thread_counts()
    if device == "cuda" and gpu_layers:
        # The most layers first: the first trials (the baseline's group) then run where the host
        # computes least, the fastest of them as a rule (run 30: 15 layers first left 9.3 s
        # per request where 22 took 6.9 s).
        # n_batch 2048 alone (llama.cpp's default): a batch is computed in n_ubatch pieces, and
        # on 79 recorded pairs of GPU trials apart only in n_batch (512 vs 2048) the request
        # time moved by a median +0.07% (benchmarks/batch_pairs.py), while a second value
        # would cost the search's coverage a trial and double the grid.
        # use_mmap off first: the host's layers then sit in pinned memory, which op offload
        # uploads a prompt's weights from at 2.5x the speed of mapped pages (run 33, H100:
        # llama-bench -lm none at the winner, a request 12% shorter); on as the alternative.
        # n_ubatch 512 and flash attention first (llama.cpp's defaults, the first trials'):
        # op offload uploads the host's weights once per n_ubatch tokens, so a smaller one
        # uploads them more often (run 34, H100: llama-bench's prompt at 41 of a 14B's 49
        # layers, 3,563 t/s at 512 and 2,485 at 256); 1024 uploads them half as often again
        # but its compute buffer takes room from the layers.
        return Space(builds=builds, n_gpu_layers=sorted(gpu_layers, reverse=True),
                     use_mmap=[False, True], n_batch=[2048],
                     n_ubatch=[512, 1024, 256], flash_attn=[True, False],
                     kv_cache=list(DEFAULT_KV_CACHES), n_threads=threads)
    if device == "cpu":
        return Space(builds=builds, n_gpu_layers=[0], n_batch=[256, 512], n_ubatch=[128, 512],
                     flash_attn=[False, True], kv_cache=list(DEFAULT_KV_CACHES),
                     n_threads=threads)
    return Space(builds=builds, n_gpu_layers=[-1], n_batch=[512, 1024, 2048, 4096],
                 n_ubatch=[256, 512, 1024, 2048, 4096], flash_attn=[False, True],
                 kv_cache=list(DEFAULT_KV_CACHES))


def load_space(path: Path) -> Space:
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"search space file {p} not found" if not p.exists()
                       else f"search space {p} is not a file")
    try:
        data = load_unique(p.read_text())
    except DuplicateKey as e:
        raise BadInput(f"search space {p}: {e}", hint="list each setting once") from None
    except (yaml.YAMLError, UnicodeDecodeError, OSError, RecursionError) as e:
        raise BadInput(f"search space {p} is not readable YAML: {str(e).splitlines()[0]}") from None
    if data is None or data == {}:
        raise BadInput(f"search space {p} is empty: it lists no setting",
                       hint="for example: n_batch: [256, 512]")
    if not isinstance(data, dict):
        raise BadInput(f"search space {p} must be a mapping of setting -> list of values")
    data = {k: (v if isinstance(v, list) else [v]) for k, v in data.items()}
    try:
        return Space.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise BadInput(f"search space {p}: {where}: {err['msg']}") from None


def physical_memory() -> int | None:
    """This machine's memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_batch_memory(space: Space, n_vocab: int | None, memory_bytes: int | None) -> None:
    """Refuse an n_batch whose logits array cannot exist: llama-cpp-python's ``Llama`` (the
    worker's reader and llama_cpp.server) allocates n_batch x n_vocab floats for the scores,
    whatever n_ctx llama.cpp clamps the batch to; above the machine's memory the server cannot
    load the config (``Unable to allocate 192 GiB``)."""
    if not n_vocab or not memory_bytes:
        return
    for n_batch in space.n_batch:
        need = n_batch * n_vocab * 4
        if need > memory_bytes:
            raise BadInput(f"n_batch {n_batch} needs a {need / 2**30:.0f} GiB logits array "
                           f"(n_batch x {n_vocab} vocabulary x 4 bytes in llama-cpp-python), "
                           f"above this machine's {memory_bytes / 2**30:.0f} GiB of memory",
                           hint="llama.cpp decodes at most n_ctx tokens per batch: list "
                                "n_batch values up to the context size")


def grid(space: Space, device: Device, workload: Workload,
         fa_ok: Callable[[str, str, str], bool]) -> list[TrialSpec]:
    """Every valid combination, baseline first. ``fa_ok(build, type_k, type_v)`` tells whether a
    build compiled flash-attention kernels for that K/V pair. Combinations that would run the
    same computation (an n_batch beyond the prompt: llama.cpp decodes the prompt in one chunk
    either way; a tensor split with split mode none, which keeps the model on one GPU) are kept
    once, with the smallest values (the first listed split)."""
    if space.combinations() > MAX_COMBINATIONS:
        raise BadInput(f"the search space holds {space.combinations():,} combinations, above "
                       f"the limit of {MAX_COMBINATIONS:,}",
                       hint="narrow the lists, or split the space into several --space files "
                            "with one --study each")
    specs: list[TrialSpec] = []
    seen: dict[tuple, int] = {}  # the computation -> its place in specs
    models: dict[tuple, Any] = {}
    p = max(workload.prompt_tokens, 1)
    # Each value's fields once, not once per combination.
    choices = [[(s.level, s.fields_of(v)) for v in space.values(s)] for s in SPACE_SETTINGS]
    for combo in itertools.product(*choices):
        fields: dict[str, dict] = {"model": {"device": device}, "context": {}}
        for level, value_fields in combo:
            fields[level].update(value_fields)
        cs = fields["context"]
        if cs["n_ubatch"] > cs["n_batch"]:
            continue
        if cs["type_v"] not in UNQUANTIZED_KV and not cs["flash_attn"]:
            continue  # llama.cpp needs flash attention for a quantized V cache
        if cs["flash_attn"] and not fa_ok(fields["model"]["build"], cs["type_k"], cs["type_v"]):
            continue
        eff_b = min(cs["n_batch"], p)
        model = dict(fields["model"])
        if model["ffn_on_host"] and (device == "cpu" or 0 <= model["n_gpu_layers"] <= 1):
            continue  # no GPU layer to split
        if model["split_mode"] == settings.SPLIT_MODES["none"]:
            model["tensor_split"] = None  # one GPU: llama.cpp has nothing to split
        # Every combination fills its fields in one order (the table's): values tell them apart.
        same = (tuple(model.values()),
                tuple({**cs, "n_batch": eff_b, "n_ubatch": min(cs["n_ubatch"], eff_b)}.values()))
        at = seen.get(same)
        if at is not None and (specs[at].context.n_batch, specs[at].context.n_ubatch) <= (
                cs["n_batch"], cs["n_ubatch"]):
            continue
        raw = tuple(fields["model"].values())
        if raw not in models:  # one ModelSettings per worker setting: spaces can be 100k
            models[raw] = ModelSettings.model_validate(fields["model"])
        spec = TrialSpec(model=models[raw], context=ContextSettings.model_validate(cs))
        if at is None:
            seen[same] = len(specs)
            specs.append(spec)
        else:  # the same computation with smaller batches: in the first one's place
            specs[at] = spec
    # Grouped by worker settings (one model load each), the baseline first within each group.
    worker_keys = {id(m): m.worker_key() for m in models.values()}
    order = {k: i for i, k in enumerate(dict.fromkeys(worker_keys[id(s.model)] for s in specs))}
    specs.sort(key=lambda s: (order[worker_keys[id(s.model)]], not is_baseline_context(s.context)))
    return specs
