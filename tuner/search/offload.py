"""A model that may not fit at full offload: the sweep's memory plan (tuner/models/memplan.py)
against this GPU's free memory, the layer counts the default space searches when it does not
fit, the host's memory checked before any trial, and each trial's share checked again against
the memory free just before it runs (another process may have taken some since the start).

A setting the plan says no longer fits becomes an infeasible record without a worker: it
teaches the search like an out-of-memory at load, at no cost."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tuner.errors import BadInput, EnvironmentUnfit
from tuner.machine import envvars
from tuner.models import memplan
from tuner.models.memplan import MIB, Budget, Context, MemoryPlan
from tuner.results.readings import TrialState
from tuner.results.records import TrialRecord
from tuner.settings import FFN_ON_HOST
from tuner.specs import TrialSpec, Workload
from tuner.worker import gpumem
from tuner.worker.outcome import Outcome

FAKE_HOST_ENV = envvars.VARS["fake_host_available_mib"].name  # FAKE (tests): never on a real run
# The layer counts searched: the most that fit (per cache type) and these many below it (the
# host's share of the work changes what is fastest).
BELOW_BOUNDARY = (0, 2, 4)
# And one layer past the most the plan says fit, per setting: the probe of the plan's boundary
# (it loads, or fails at load as an infeasible trial that costs seconds). Calibrated on run
# 29's recorded peak, the plan gave qwen3-8b Q4_K_M at 4 GiB 22 layers with a q8_0 cache where
# llama-bench loaded 23 in run 30, the fastest it measured (benchmarks/partial_offload.py
# replay); each layer was about 5% of the request there.
PROBE_ABOVE = 1
# A mixture of experts that does not fit whole also runs every layer on the GPU with the expert
# weights of its first K layers on the host (n_cpu_moe; llama.cpp's own fit places a model so
# when its dense weights fit): K from the fewest the plan fits (per cache type, smallest
# n_ubatch) to these many more (a larger n_ubatch's compute buffer needs room), and one fewer to
# probe the plan.
EXPERTS_ABOVE_FEWEST = (0, 1, 2)
# Where the whole layer stops fitting (a dense model's layer past the most that fit whole; a
# mixture's layer past one fewer layers' experts on the host than the fewest that fit), that
# layer with part of its FFN on the host (the setting ffn_on_host; llama.cpp's own fit places
# such a partial layer): per setting, the part that keeps the most on the GPU the plan fits,
# and the next one up to probe the plan.
FFN_PARTS = tuple(FFN_ON_HOST)  # least on the GPU first
PLANNED_REFUSAL = "does not fit by the memory plan"  # no_longer_fits's verdict: no load tried


@dataclass(frozen=True)
class OffloadPlan:
    """The plan at the sweep's start and the n_gpu_layers the default space searches (empty
    when the model fits at full offload)."""

    plan: MemoryPlan
    layers: tuple[int, ...]
    # The n_cpu_moe counts searched with every layer on the GPU (empty: a dense model, or
    # experts on the host do not make it fit)
    experts: tuple[int, ...] = ()
    # The ffn_on_host values searched where the whole layer stops fitting (empty: the model
    # fits whole, or a mixture of experts that experts on the host do not make fit)
    parts: tuple[str, ...] = ()
    # The process overhead measured by a trial (calibrate), once there is one; the plan's
    # budget then holds it.
    measured_overhead_mib: float | None = None
    # The budget whose boundary the sweep reports as planned (boundary_lines): the plan's as
    # made and calibrated, before loads above it moved it (walk_up).
    predicted: Budget | None = None

    @property
    def partial(self) -> bool:
        return bool(self.layers)

    @property
    def overhead_mib(self) -> float:
        return self.plan.budget.overhead_mib


def calibrate(op: OffloadPlan, spec: TrialSpec, wl: Workload,
              peak_mib: float) -> tuple[OffloadPlan, str]:
    """The plan re-made with the process overhead a real trial showed: its NVML peak less the
    buffers the plan gave its setting (the estimate's error at that setting included), and
    without the margin, which stood for that unmeasured error: a setting the calibrated plan
    still gets wrong fails at load, an infeasible trial that costs seconds, and every finalist
    loads again before it is chosen. Run 30 (H200, 4 GiB free): the plan's 900 MiB overhead and
    256 MiB margin kept 17 layers where llama-bench loaded 22, and each layer more was about 5%
    of the request time. Only ever lowered: a reading above the plan's overhead (a driver that
    cannot see the worker's pid reports the whole device) leaves the plan as it is. The layers
    searched become the new boundary's alone: the old boundary's counts, below them, leave the
    host more of the work, and the search's coverage (every value of every dimension tried
    once) would spend a trial on each; the trial that calibrated stays a record and a finalist
    candidate."""
    need = planned_gpu_mib(op.plan.layout, spec, wl)
    measured = peak_mib - need
    head = (f"memory plan: trial at {placement_text(spec)} peaked at "
            f"{peak_mib:,.0f} MiB, the plan's buffers {need:,.0f} MiB")
    if measured >= op.overhead_mib:
        return (dataclasses.replace(op, measured_overhead_mib=measured),
                f"{head}: {measured:,.0f} MiB beyond them, not below the planned "
                f"{op.overhead_mib:,.0f} MiB overhead; the plan stays")
    old = op.plan.budget
    budget = dataclasses.replace(old, overhead_mib=max(measured, 0.0), margin_mib=0.0)
    plan = memplan.make_plan(op.plan.layout, op.plan.n_ctx, budget)
    layers, experts = search_layers(plan), search_experts(plan)
    return (OffloadPlan(plan=plan, layers=layers, experts=experts, parts=search_parts(plan),
                        measured_overhead_mib=measured, predicted=op.predicted),
            f"{head}: the process overhead is {max(measured, 0.0):,.0f} MiB, not the "
            f"{old.overhead_mib:,.0f} MiB planned, and the {old.margin_mib:,.0f} MiB margin "
            "for the plan's error is dropped (a setting that still does not fit fails at load, "
            "infeasible); " + _moved(op, plan, layers, experts))


def walk_up(op: OffloadPlan, spec: TrialSpec, wl: Workload) -> tuple[OffloadPlan, str] | None:
    """A trial that loaded and ran where the plan says it does not fit (the probe past the
    boundary, or past a boundary an earlier probe moved) proves the plan's overhead too high:
    at most what that load left of the free memory (and of --max-vram), the margin none. The
    plan is made again with it, so the search's layers move to the new boundary with a probe
    one further: the search walks up until a load fails (an infeasible trial, seconds) or every
    layer is on the GPU, as llama-bench's boundary is found, and is never left a layer short
    of what loads (each was about 5% of the request at run 30's boundary). None when the plan
    already fits ``spec``. A plan that now fits the whole model keeps its layers: the most,
    every layer on the GPU, are among them."""
    if not op.partial or spec.model.device != "cuda":
        return None
    layout, old = op.plan.layout, op.plan.budget
    need = planned_gpu_mib(layout, spec, wl)
    if need <= old.usable_bytes / MIB:
        return None
    # Against the memory free after the load (another process may have let some go since the
    # plan was made: then the load proves less about the plan), the plan's where unreadable.
    free = free_for_trials(spec.model.main_gpu)
    free = old.free_mib if free is None else free
    room = free if old.max_vram_mib is None else min(free, old.max_vram_mib)
    # Below 0 where the plan's own estimate of the load is more than the memory there was:
    # the overhead then stands for the plan's error too, as the calibration's does.
    budget = dataclasses.replace(old, free_mib=free, overhead_mib=room - need, margin_mib=0.0)
    plan = memplan.make_plan(layout, op.plan.n_ctx, budget)
    layers = op.layers if plan.fits_full else search_layers(plan)
    experts = search_experts(plan) if op.experts else ()
    walked = OffloadPlan(plan=plan, layers=layers, experts=experts,
                         parts=op.parts if plan.fits_full else search_parts(plan),
                         measured_overhead_mib=op.measured_overhead_mib,
                         predicted=op.predicted or old)
    return walked, (
        f"memory plan: {placement_text(spec)} loaded and ran where the plan gave "
        f"{need:,.0f} MiB on the GPU more than its {old.usable_bytes / MIB:,.0f} MiB usable: "
        f"the overhead (the plan's error in it) is at most {budget.overhead_mib:,.0f} MiB; "
        + _moved(op, plan, layers, experts))


def _moved(op: OffloadPlan, plan: MemoryPlan, layers: tuple[int, ...],
           experts: tuple[int, ...]) -> str:
    """What a plan made again says: the most layers that fit now, and the counts the search
    moves to where they changed."""
    return ("most layers that fit now " + ", ".join(f"{kv} {n}" for kv, n in _tops(plan).items())
            + (f"; searching n_gpu_layers {list(layers)} (was {list(op.layers)})"
               if layers != op.layers else "")
            + (f"; searching n_cpu_moe {list(experts)} (was {list(op.experts)})"
               if experts != op.experts else ""))


def _tops(plan: MemoryPlan) -> dict[str, int]:
    tops: dict[str, int] = {}
    for r in plan.rows:
        tops[r.kv] = max(tops.get(r.kv, 0), r.most_layers)
    return tops


def plan_model(layout: memplan.ModelLayout | None, wl: Workload, max_vram_mib: float | None,
               main_gpu: int = 0) -> MemoryPlan | None:
    """The memory plan of the model at the workload's context on this GPU, or None without a
    free-memory reading (no NVIDIA driver) or for a model shape the plan cannot read (no
    ``layout``). Read before the sweep starts any worker: the free memory is then the
    sweep's to use."""
    free = gpumem.free_mib(main_gpu)
    if free is None or layout is None:
        return None
    return memplan.make_plan(layout, wl.n_ctx, Budget(free_mib=free, max_vram_mib=max_vram_mib))


def search_layers(plan: MemoryPlan) -> tuple[int, ...]:
    """The n_gpu_layers near the boundary: for each cache type its most that fit, a few below
    (none below for a mixture of experts searched with experts on the host: each layer moved
    whole leaves the host its attention and cache besides its experts, so fewer layers only
    spend the search's trials) and the probe above; nothing when the model fits whole."""
    if plan.fits_full:
        return ()
    tops = _tops(plan).values()
    below = (0,) if plan.experts_host else BELOW_BOUNDARY
    values = {t - d for t in tops for d in below if t - d >= 0}
    values |= {min(t + PROBE_ABOVE, plan.layout.n_offloadable) for t in tops}
    return tuple(sorted(values)) or (0,)


def search_parts(plan: MemoryPlan) -> tuple[str, ...]:
    """The ffn_on_host values the search may pair with the layer where the whole layer stops
    fitting (keep_fitting keeps, per setting, the part the plan fits with the most on the GPU
    and the next one up; parts_for): for a model that does not fit whole, a dense one's past
    its most layers, a mixture of experts' past one fewer layers' experts on the host than the
    fewest that fit (none where experts on the host do not make it fit)."""
    if plan.fits_full or (any(plan.layout.expert_bytes) and not plan.experts_host):
        return ()
    return parts_for(plan.layout)


def search_experts(plan: MemoryPlan) -> tuple[int, ...]:
    """The n_cpu_moe counts (every layer on the GPU) near the fewest that fit, for each cache
    type the plan found one for, and the probe one below; nothing for a dense model or one
    that fits whole."""
    if plan.fits_full:
        return ()
    n = plan.layout.n_layer
    values = {k + d for _, k in plan.experts_host for d in EXPERTS_ABOVE_FEWEST if k + d <= n}
    values |= {k - PROBE_ABOVE for _, k in plan.experts_host if k - PROBE_ABOVE >= 1}
    return tuple(sorted(values))


def check_experts(layout: memplan.ModelLayout | None, counts: list[int]) -> None:
    """Refuse (BadInput) experts on the host the model cannot have: any for a model without
    expert tensors (a dense one), or more layers than it has (the placement proof would find
    fewer moved than asked). Unchecked for a shape the plan cannot read."""
    asked = max(counts, default=0)
    if layout is None or asked <= 0:
        return
    if not any(layout.expert_bytes):
        raise BadInput(f"n_cpu_moe {asked}: {layout.path.name} has no expert tensors (*_exps): "
                       "it is not a mixture of experts",
                       hint="leave n_cpu_moe out of the space, or use n_gpu_layers")
    if asked > layout.n_layer:
        raise BadInput(f"n_cpu_moe {asked}: {layout.path.name} has {layout.n_layer} layers",
                       hint=f"list counts up to {layout.n_layer}")


def check_parts(layout: memplan.ModelLayout | None, parts: list[str]) -> None:
    """Refuse (BadInput) ffn_on_host for a model without FFN matrices (blk.N.ffn_gate, _up,
    _down or their experts) to keep on the host. Unchecked for a shape the plan cannot
    read."""
    asked = [p for p in parts if p]
    if layout is None or not asked:
        return
    if not any(b for per_layer in layout.ffn_part_bytes for b in per_layer):
        raise BadInput(f"ffn_on_host {asked[0]}: {layout.path.name} has no FFN matrices "
                       "(blk.N.ffn_gate/up/down) to keep on the host",
                       hint="leave ffn_on_host out of the space")


def places_on_host(spec: TrialSpec) -> bool:
    """Whether a CUDA setting keeps part of the model's layers in host memory: layers
    (n_gpu_layers >= 0), the experts of some (n_cpu_moe) or part of one's FFN (ffn_on_host)."""
    m = spec.model
    return m.device == "cuda" and (m.n_gpu_layers >= 0 or bool(m.n_cpu_moe) or
                                   bool(m.ffn_on_host))


def placement_text(spec: TrialSpec) -> str:
    """"n_gpu_layers 20", "n_gpu_layers 21 ffn_on_host down", or "n_cpu_moe 12" (every layer
    on the GPU)."""
    m = spec.model
    if m.n_cpu_moe:
        return f"n_cpu_moe {m.n_cpu_moe}"
    return f"n_gpu_layers {m.n_gpu_layers}" + (f" ffn_on_host {m.ffn_on_host}"
                                                if m.ffn_on_host else "")


def tried_by_plan(layout: memplan.ModelLayout, budget: Budget, spec: TrialSpec,
                  wl: Workload) -> tuple[bool, str]:
    """Whether a trial of ``spec`` is given a load in ``budget`` (the plan's fit and the probe
    past it), and the bound that decided: with experts on the host (n_cpu_moe, every layer on
    the GPU), down to one layer's experts fewer than the fewest that fit; else up to one layer
    more than the most that fit; part of a layer's FFN on the host (ffn_on_host), at the
    boundary alone (_part_tried)."""
    ctx = spec_context(spec, wl)
    if ctx.ffn_on_host:
        return _part_tried(layout, budget, ctx, _asked(layout, spec))
    if ctx.experts_on_host:
        fewest = memplan.fewest_experts_on_host(layout, budget, ctx)
        if fewest is None:
            return False, "not even every layer's experts on the host fit"
        return (ctx.experts_on_host >= fewest - PROBE_ABOVE,
                f"the fewest layers' experts on the host that fit: {fewest}, and one fewer "
                "is tried")
    most = memplan.most_layers(layout, budget, ctx)
    return _asked(layout, spec) <= most + PROBE_ABOVE, \
        f"the most that fit: {most}, and one more is tried"


def _asked(layout: memplan.ModelLayout, spec: TrialSpec) -> int:
    n = spec.model.n_gpu_layers
    return layout.n_offloadable if n < 0 else min(n, layout.n_offloadable)


def parts_for(layout: memplan.ModelLayout) -> tuple[str, ...]:
    """The ffn_on_host values worth a trial at the boundary: every one for a dense model; for
    a mixture of experts those that keep some of the layer's experts on the GPU (gate+up+down
    keeps less there than the layer's experts alone on the host, the next count whole)."""
    return FFN_PARTS[1:] if any(layout.expert_bytes) else FFN_PARTS


def _part_tried(layout: memplan.ModelLayout, budget: Budget, ctx: Context,
                asked: int) -> tuple[bool, str]:
    """tried_by_plan for part of a layer's FFN on the host (``asked`` n_gpu_layers), only where
    the whole layer does not fit (elsewhere it does: more on the GPU): the layer past the most
    that fit whole, or, with experts on the host, the layer past one fewer layers' experts
    than the fewest that fit; there the part that keeps the most on the GPU the plan fits, and
    the next one up (the probe). A part outside that ladder (a user's space) where it fits."""
    whole = dataclasses.replace(ctx, ffn_on_host="")
    if ctx.experts_on_host:
        fewest = memplan.fewest_experts_on_host(layout, budget, whole)
        if fewest is None:
            return False, "not even every layer's experts on the host fit"
        bound = (f"the fewest layers' experts on the host that fit whole: {fewest}; part of "
                 f"the next layer's FFN on the host")
        here, there = ctx.experts_on_host == fewest - 1, f" only with n_cpu_moe {fewest - 1}"
    else:
        most = memplan.most_layers(layout, budget, whole)
        bound = f"the most that fit whole: {most}; a part of the next layer's FFN on the host"
        here, there = asked == most + 1, f" only at {most + 1} layers"
    if not here:
        return False, bound + there
    ladder = parts_for(layout)
    fits = [memplan.place(layout, asked, dataclasses.replace(ctx, ffn_on_host=p)).gpu.total
            <= budget.usable_bytes for p in ladder]
    best = max((i for i, ok in enumerate(fits) if ok), default=-1)  # -1: not even the least
    said = bound + (f": the most on the GPU that fits {ladder[best]}, and the next is tried"
                    if best >= 0 else ": none fits, and the least on the GPU is tried")
    if ctx.ffn_on_host not in ladder:
        return memplan.place(layout, asked, ctx).gpu.total <= budget.usable_bytes, said
    return ladder.index(ctx.ffn_on_host) in (best, best + 1), said


def host_available_mib() -> float | None:
    """MemAvailable of /proc/meminfo in MiB (``TUNER_FAKE_HOST_AVAILABLE_MIB`` FAKE for
    tests), or None where there is none."""
    fake = envvars.current().fake_host_available_mib  # FAKE (tests): before /proc/meminfo
    if fake is not None:
        return fake
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def check_host(op: OffloadPlan, wl: Workload) -> str:
    """Refuse (EnvironmentUnfit, exit 3) when the host cannot hold its share at the fewest
    layers searched, or with the most experts on the host searched, whichever holds more: the
    weights left on the host are read into its memory, with their KV cache. Returns the line
    saying what the host holds."""
    fewest = min(op.layers)
    shares = [(f"at {fewest} GPU layers", memplan.place(op.plan.layout, fewest,
                                                        Context(n_ctx=wl.n_ctx)))]
    if op.experts:
        k = max(op.experts)
        shares.append((f"with the experts of {k} layers in host memory", memplan.place(
            op.plan.layout, -1, Context(n_ctx=wl.n_ctx, experts_on_host=k))))
    where, p = max(shares, key=lambda share: share[1].host.total)
    need = p.host.total / MIB
    have = host_available_mib()
    line = (f"memory plan: {where}, the host holds {need:,.0f} MiB "
            f"(weights {p.host.weights / MIB:,.0f}, KV {p.host.kv / MIB:,.0f}); "
            f"{'unknown' if have is None else f'{have:,.0f} MiB'} available")
    if have is not None and need > have:
        raise EnvironmentUnfit(
            f"the host has {have:,.0f} MiB available; {where}, it needs {need:,.0f} MiB of it "
            "for what the GPU cannot hold",
            "free host memory, or use a smaller quantization of the model")
    return line


def prepare(layout: memplan.ModelLayout | None, wl: Workload, max_vram_mib: float | None,
            main_gpu: int = 0) -> tuple[OffloadPlan | None, list[str]]:
    """The plan of the model laid out as ``layout`` (``memplan.layout_or_none``) and the
    lines the sweep prints first; the host checked when layers stay on it. None (and a line
    saying why) without a free-memory reading or a layout."""
    plan = plan_model(layout, wl, max_vram_mib, main_gpu)
    if plan is None:
        return None, ["memory plan: none (no GPU free-memory reading, or a model shape the "
                      "plan cannot read)"]
    op = OffloadPlan(plan=plan, layers=search_layers(plan), experts=search_experts(plan),
                     parts=search_parts(plan))
    lines = plan.lines()
    if op.partial:
        below = "" if op.experts else ", a few below,"
        lines.append(f"memory plan: searching n_gpu_layers {list(op.layers)} (the most that "
                     f"fit per cache type{below} and one more to probe the plan, a layer "
                     "further each time such a probe loads)")
        if op.experts:
            lines.append(f"memory plan: and every layer on the GPU with n_cpu_moe "
                         f"{list(op.experts)} (the first layers whose experts stay on the "
                         "host: the fewest that fit per cache type, a few more, and one "
                         "fewer to probe the plan, a layer fewer each time such a probe "
                         "loads)")
        if op.parts:
            lines.append("memory plan: and, where the whole layer stops fitting, that layer "
                         "with part of its FFN on the host (ffn_on_host "
                         f"{', '.join(op.parts)}: the part that keeps the most on the GPU the "
                         "plan fits, and the next one to probe it), as llama.cpp's own fit "
                         "places a partial layer")
        lines.append(check_host(op, wl))
    return op, lines


def spec_context(spec: TrialSpec, wl: Workload) -> Context:
    c = spec.context
    return Context(n_ctx=wl.n_ctx, type_k=c.type_k, type_v=c.type_v, n_ubatch=c.n_ubatch,
                   flash_attn=c.flash_attn, op_offload=c.op_offload,
                   experts_on_host=spec.model.n_cpu_moe, ffn_on_host=spec.model.ffn_on_host)


def planned_gpu_mib(layout: memplan.ModelLayout, spec: TrialSpec, wl: Workload) -> float:
    """What the plan gives a trial of ``spec`` on the GPU, in MiB (its layers, experts kept on
    the host, cache and compute buffers at the workload's context)."""
    return memplan.place(layout, spec.model.n_gpu_layers, spec_context(spec, wl)).gpu.total / MIB


def keep_fitting(op: OffloadPlan | None, specs: list[TrialSpec], wl: Workload) -> list[TrialSpec]:
    """The default partial-offload grid without the settings the plan says do not fit (more
    layers than fit at their cache type and n_ubatch, the probe above excepted) and without
    parts of a layer's FFN on the host away from where the whole layer stops fitting
    (tried_by_plan): they would only spend the search's patience. A mixture of experts'
    experts on the host go with every layer on the GPU, its parts with its experts.
    Unchanged when the model fits whole or there is no plan."""
    if op is None or not op.partial:
        return specs
    tried: dict[tuple[Context, int], bool] = {}  # the grid's few settings, each planned once
    kept = []
    for s in specs:
        n, k = s.model.n_gpu_layers, s.model.n_cpu_moe
        if op.experts and (k > 0) != (n < 0):  # experts on the host with every layer alone
            continue
        if op.experts and s.model.ffn_on_host and not k:  # a MoE's part: beside its experts
            continue
        key = (spec_context(s, wl), n)
        if key not in tried:
            tried[key] = tried_by_plan(op.plan.layout, op.plan.budget, s, wl)[0]
        if tried[key]:
            kept.append(s)
    return kept


def free_for_trials(main_gpu: int) -> float | None:
    """The GPU memory a trial may take now: NVML's free figure plus what this sweep's own
    workers hold (the trial takes their place); None when either cannot be told."""
    free, own = gpumem.free_mib(main_gpu), gpumem.children_mib(main_gpu)
    return None if free is None or own is None else free + own


def no_longer_fits(layout: memplan.ModelLayout, spec: TrialSpec, wl: Workload,
                   budget: Budget) -> str | None:
    """Why ``spec`` is infeasible by the plan against the memory free now (plus what this
    sweep's own workers hold, which the trial takes over), or None. ``budget``: the plan's
    (its overhead and margin as planned, or as a trial calibrated them; --max-vram); its free
    memory is read again here."""
    if spec.model.device != "cuda":
        return None
    free = free_for_trials(spec.model.main_gpu)
    if free is None:
        return None
    now = dataclasses.replace(budget, free_mib=free)
    ok, bound = tried_by_plan(layout, now, spec, wl)
    if ok:
        return None
    return (f"{PLANNED_REFUSAL}: {planned_gpu_mib(layout, spec, wl):,.0f} MiB on the GPU for "
            f"{placement_text(spec)}, {now.usable_bytes / MIB:,.0f} MiB "
            f"usable of {free:,.0f} MiB free now ({bound})")


def planned_outcome(op: OffloadPlan | None, spec: TrialSpec, wl: Workload) -> Outcome | None:
    """An infeasible outcome, without a worker, for a setting of the partial-offload search
    the plan says no longer fits; None otherwise (run it)."""
    if op is None or not op.partial:
        return None
    why = no_longer_fits(op.plan.layout, spec, wl, op.plan.budget)
    return None if why is None else Outcome(state=TrialState.INFEASIBLE, error=why)


def boundary_lines(op: OffloadPlan, records: list[TrialRecord], wl: Workload) -> list[str]:
    """The plan's boundary against the loads the search made, per cache type, n_ubatch and
    flash attention it tried: the most layers the plan says fit, the most that loaded, the
    fewest that failed at load (the plan's error, as the search measured it); with experts on
    the host, the fewest layers' experts the plan fits, the fewest that loaded and the most
    that failed."""
    # per context, whether experts were on the host: the counts that loaded and that failed
    seen: dict[tuple[Context, bool], tuple[list[int], list[int]]] = {}
    for r in records:
        k = r.spec.model.n_cpu_moe
        if not places_on_host(r.spec):
            continue
        ctx = dataclasses.replace(spec_context(r.spec, wl), experts_on_host=0)
        loaded, failed = seen.setdefault((ctx, k > 0), ([], []))
        count = k or _asked(op.plan.layout, r.spec)
        if r.state in (TrialState.COMPLETE, TrialState.PRUNED):
            loaded.append(count)
        elif (r.state is TrialState.INFEASIBLE
              and not (r.error or "").startswith(PLANNED_REFUSAL)):
            failed.append(count)
    out, budget = [], op.predicted or op.plan.budget
    def order(key: tuple[Context, bool]) -> tuple[str, str, int, bool, bool, str]:
        c, experts = key
        return c.type_k, c.type_v, c.n_ubatch, c.flash_attn, experts, c.ffn_on_host

    for (ctx, experts), (loaded, failed) in sorted(seen.items(), key=lambda i: order(i[0])):
        if not (loaded or failed):
            continue
        head = (f"memory plan against loads: kv {ctx.type_k}/{ctx.type_v} n_ubatch "
                f"{ctx.n_ubatch} flash_attn {'on' if ctx.flash_attn else 'off'}"
                + (f" ffn_on_host {ctx.ffn_on_host}" if ctx.ffn_on_host else "") + ": ")
        if experts:  # fewer experts on the host is more on the GPU
            fewest = memplan.fewest_experts_on_host(op.plan.layout, budget, ctx)
            parts = [f"planned {'none' if fewest is None else fewest}"]
            parts += [f"loaded down to {min(loaded)}"] if loaded else []
            parts += [f"failed to load at {max(failed)}"] if failed else []
            out.append(head + "n_cpu_moe (every layer on the GPU) " + ", ".join(parts))
        else:
            parts = [f"planned {memplan.most_layers(op.plan.layout, budget, ctx)}"]
            parts += [f"loaded up to {max(loaded)}"] if loaded else []
            parts += [f"failed to load at {min(failed)}"] if failed else []
            out.append(head + ", ".join(parts))
    return out


def finalist_outcome(layout: memplan.ModelLayout | None, spec: TrialSpec, wl: Workload,
                     budget: Budget) -> Outcome | None:
    """A partial-offload finalist (n_gpu_layers >= 0, experts or FFN matrices on the host) that
    no longer fits the memory free now
    (another process took some since its search trial): infeasible, without a worker.
    ``layout``: the model's as the sweep read it (None: a shape the plan cannot read);
    ``budget``: the sweep's plan's (no_longer_fits)."""
    if layout is None or not places_on_host(spec):
        return None
    why = no_longer_fits(layout, spec, wl, budget)
    return None if why is None else Outcome(state=TrialState.INFEASIBLE,
                                            error=f"finalist {why}")
