"""`plan(recipe, cluster)`: search the space, rank by time to train, explain.

The space (plan.space, techniques/*/space.py) is every structure (dp x tp x pp x threads,
sync, partition, subnet, on the cluster or fewer devices) times every knob: each
micro-batch size dividing the per-replica batch, 1F1B / GPipe / interleaved with every
valid chunk count, sequence parallel off and on, each recompute mode, ZeRO 0-3, each
averaging period. The search returns the cost model's optimum over all of it (and each
family's best, which the explanations quote) by best-first branch and bound on floors
(plan/bounds.py), which are true lower bounds of the same cost model. One heap holds
items of four levels, each with a floor per technique family of the settings under it:
  structure -> nodes (one micro-batch size each) -> groups (sequence parallel, schedule,
  chunks) -> leaves (recompute mode, sharding: one strategy per averaging period);
an item is split (or a leaf priced) when the heap reaches its least floor, so settings
are priced in floor order across the whole space:
  - step-time floor: an item whose floor for every family is above both the K-th best
    plan and that family's best is skipped;
  - memory floor: a structure (at its smallest micro-batch), a node, or a leaf, whose
    peak rank must hold more than the device does is skipped, checked when the heap
    reaches it; a leaf whose layout the cost model fixes (chunks > 1, no pipeline) is
    checked on its exact memory (its first rank, then every rank) before it is priced.
The search runs with the cyclic garbage collector paused (util.cyclic_gc_paused).
No other pruning: tests/test_planner_oracle.py checks plan 1 against brute force.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Optional, Sequence

from autopar.cost.estimate import Estimate
from autopar.cost.model import CostModel
from autopar.errors import InputError
from autopar.plan import explain
from autopar.plan.bounds import NodeFloors
from autopar.plan.families import family_of
from autopar.plan.result import Objective, Plan, PlanResult, recipe_fingerprint
from autopar.plan.space import SearchContext, structures
from autopar.plan.state import Search
from autopar.profile.types import ModelProfile
from autopar.spec.cluster import Cluster
from autopar.spec.enums import Recompute, Schedule
from autopar.spec.recipe import Recipe
from autopar.spec.strategy import Strategy
from autopar.techniques.data.space import Sharding, pinned_shardings, shardings
from autopar.techniques.local_sgd.space import sync_periods
from autopar.techniques.microbatch.space import microbatches
from autopar.techniques.pipeline.space import schedules
from autopar.techniques.recompute.space import recomputes
from autopar.techniques.tensor.space import sequence_parallel
from autopar.util import cyclic_gc_paused


def _score_floor(search: Search, f: NodeFloors, step_s: float) -> float:
    """The objective's floor for a step-time floor (result.score's formula)."""
    if search.objective is Objective.THROUGHPUT:
        return step_s
    ttt = step_s * f.steps * f.steps_factor_min
    return ttt * f.devices if search.objective is Objective.DEVICES else ttt


Floors = tuple[tuple[str, float], ...]  # (family, objective floor of its settings under a search item)


def _family_rests(search: Search, c: dict, rests: Sequence[tuple[Sharding, float]]) -> tuple[tuple[str, float], ...]:
    """Per family of the shardings, the least rest (optimizer, synchronisation; s) among that
    family's shardings: a ZeRO-3 setting is bounded by ZeRO-3's rest, not DDP's."""
    least: dict[str, float] = {}
    for zero, rest in rests:
        fam = search.family(c, zero)
        least[fam] = min(rest, least.get(fam, float("inf")))
    return tuple(least.items())


def _family_floors(search: Search, f: NodeFloors, c: dict, base_s: float, rests: Sequence[tuple[Sharding, float]]) -> Floors:
    """Per family, the objective floor of base_s plus the family's least rest."""
    return tuple((fam, _score_floor(search, f, base_s + rest)) for fam, rest in _family_rests(search, c, rests))


def _beaten(search: Search, floors: Floors) -> bool:
    """Every family's floor is above its limit: nothing under the item is kept."""
    limit = search.limit
    return all(floor > limit(fam) for fam, floor in floors)


def _dropped(search: Search, floors: Floors) -> bool:
    """_beaten, and if so the families' floors noted as their bounds and the pruning counted."""
    if not _beaten(search, floors):
        return False
    _count(search, "step-time floor")
    for fam, floor in floors:
        search.note_bound(fam, floor)
    return True


def _count(search: Search, name: str, n: int = 1) -> None:
    if n:
        search.pruned[name] = search.pruned.get(name, 0) + n


@dataclass(frozen=True)
class _Node:
    """A structure at one micro-batch size, with its floors."""

    floors: Floors  # per family, the objective floor over every knob setting
    c: dict
    b: int
    f: NodeFloors
    knobs: tuple  # (schedule pairs, sequence parallel values, recompute modes, ZeRO stages, periods)
    fitting: bool = False  # floors are _fitting_floors (memory checked): split when the heap reaches them


@dataclass(frozen=True)
class _Structure:
    """A structure before its micro-batch sizes are split into nodes; its memory is checked
    when the heap reaches its floor. One beaten before that is never checked, and no family
    loses its 'needs X GB' by it: a family's limit is infinite until one of its settings is
    priced and fits (Search.threshold), so only families with a fitting plan are beaten."""

    floors: Floors
    c: dict
    sizes: tuple[int, ...]  # micro-batch sizes, largest first
    knobs: tuple
    node_floors: dict[int, NodeFloors]  # those built for the structure's floor, reused by its nodes


def _structure(search: Search, c: dict) -> Optional[_Structure]:
    """The structure with its floor: the pipeline's per-sample floor at the largest micro-batch
    (per-sample time never grows with the micro-batch in the cost model: weights, launches
    and latencies amortise, GEMMs get wider; tests/test_planner_oracle.py checks it), or
    None when no micro-batch size is left."""
    ctx = search.ctx
    sps = search.pinned("sequence_parallel", sequence_parallel(ctx, c))
    rcs = search.pinned("recompute", recomputes(ctx))
    zeros = pinned_shardings(shardings(ctx, c), search.fixed)
    periods = search.pinned("sync_every", sync_periods(c))
    local = ctx.global_batch if c["data_partition"].value == "features" else ctx.global_batch // c["dp"]
    sizes = microbatches(ctx, c)
    if "microbatch" in search.fixed:
        b = search.fixed["microbatch"] or local
        sizes = [b] if b in sizes else []
    if not sizes:
        return None
    big = NodeFloors(search.model, c, sizes[0], local // sizes[0], periods)
    rests = [(z, big.optimizer_s(sps[0], Recompute.NONE, z)) for z in zeros]
    floors = _family_floors(search, big, c, min(big.per_sample_pipe_s(sp) for sp in sps), rests)
    return _Structure(floors, c, tuple(sizes), (sps, rcs, zeros, periods), {sizes[0]: big})


def _fits_somewhere(search: Search, st: _Structure) -> bool:
    """Whether the structure's least-memory setting at its smallest micro-batch can fit;
    where it cannot, its leanest settings are noted (the family's 'needs X GB')."""
    sps, rcs, zeros, periods = st.knobs
    c, b = st.c, st.sizes[-1]
    local = search.ctx.global_batch if c["data_partition"].value == "features" else search.ctx.global_batch // c["dp"]
    small = st.node_floors.get(b) or NodeFloors(search.model, c, b, local // b, periods)
    st.node_floors[b] = small
    if small.least_bytes(sps, Schedule.ONE_F_ONE_B, rcs, zeros, any_microbatch=True) <= small.capacity_bytes:
        return True
    _count(search, "memory floor")
    pairs = _pinned_schedules(search, c, local // b)
    if pairs:
        _note_leanest(search, _Node((), c, b, small, (pairs, sps, rcs, zeros, periods)))
    return False


def _nodes(search: Search, st: _Structure) -> list[_Node]:
    ctx, out, c = search.ctx, [], st.c
    sps, rcs, zeros, periods = st.knobs
    local = ctx.global_batch if c["data_partition"].value == "features" else ctx.global_batch // c["dp"]
    for b in st.sizes:
        m = local // b
        pairs = _pinned_schedules(search, c, m)
        if not pairs:
            continue
        f = st.node_floors.get(b) or NodeFloors(search.model, c, b, m, periods)
        # pipeline floor without recompute (it only adds), optimizer at its least, no sync
        rests = [(z, f.optimizer_s(sps[0], Recompute.NONE, z)) for z in zeros]
        floors = _family_floors(search, f, c, min(f.any_pipe_s(sp, pairs) for sp in sps), rests)
        out.append(_Node(floors, c, b, f, (pairs, sps, rcs, zeros, periods)))
    return out


def _fitting_floors(search: Search, n: _Node) -> Floors:
    """A node's floors over the (sp, recompute, sharding) settings whose memory floor fits at
    some schedule, each at its recompute mode's pipeline floor and the sharding's optimizer
    step (empty: nothing fits). Tighter than the node's pushed floor, which takes no
    recompute for every setting, and it needs no synchronisation priced."""
    f, c = n.f, n.c
    pairs, sps, rcs, zeros, _ = n.knobs
    kinds: dict[Schedule, int] = {}  # per schedule its fewest chunks: bytes() there is a floor for more
    for sched, v in pairs:
        kinds[sched] = min(v, kinds.get(sched, v))
    per_s = _score_floor(search, f, 1.0)
    least: dict[str, float] = {}
    for sp in sps:
        for rc in rcs:
            fit = f.fitting(sp, rc, list(kinds.items()), zeros)
            if fit:
                pipe = f.any_pipe_s(sp, pairs, rc)
                for z in fit:
                    fam = search.family(c, z)
                    least[fam] = min(pipe + f.optimizer_s(sp, rc, z), least.get(fam, float("inf")))
    unfit = {search.family(c, z) for z in zeros} - least.keys()
    if unfit and least:  # families nothing of which fits here are explained by what they need
        _note_leanest(search, n, unfit)
    return tuple((fam, t * per_s) for fam, t in least.items())


@dataclass(frozen=True)
class _Group:
    """A node's (sequence parallel, schedule, chunks): its recompute modes and shardings are
    split into leaves only when the heap reaches the group's floor."""

    floors: Floors
    node: _Node
    sp: bool
    sched: Schedule
    v: int


@dataclass(frozen=True)
class _Leaf:
    """One knob setting, priced when the heap reaches its floor: settings are taken in floor
    order across every node, so few above the final thresholds are priced."""

    fam: str
    group: _Group
    rc: Recompute
    zero: Sharding
    floor: float

    @property
    def floors(self) -> Floors:
        return ((self.fam, self.floor),)

    def strategies(self) -> list[Strategy]:
        g, n = self.group, self.group.node
        return [_setting(n.c, n.b, n.f.m, g.sched, g.v, g.sp, self.rc, self.zero, period) for period in n.knobs[4]]


def _groups(search: Search, n: _Node) -> list[_Group]:
    """A node's (sp, schedule, chunks) groups whose floors are not above the plans kept."""
    f, c, out = n.f, n.c, []
    pairs, sps, rcs, zeros, _ = n.knobs
    per_s = _score_floor(search, f, 1.0)  # the objective is linear in the step time
    optimizer = [(z, search.family(c, z), f.optimizer_s(sps[0], Recompute.NONE, z)) for z in zeros]
    least_optimizer = _family_rests(search, c, [(z, opt) for z, _, opt in optimizer])
    for sp in sps:
        pipes = [(sched, v, f.pipe_s(sp, sched, v)) for sched, v in pairs]
        # the optimizer alone first (a floor of the rest): synchronisation is priced only
        # for the (schedule, chunks) pairs it leaves, and for the shardings it leaves at the
        # least of their pipeline floors
        left = [(sched, v, pipe) for sched, v, pipe in pipes
                if not _dropped(search, tuple((fam, (pipe + rest) * per_s) for fam, rest in least_optimizer))]
        if not left:
            continue
        least_pipe = min(pipe for _, _, pipe in left)
        live = [z for z, fam, opt in optimizer if not _dropped(search, ((fam, (least_pipe + opt) * per_s),))]
        fewest: dict[Schedule, int] = {}  # per schedule its fewest chunks: bytes() there is a floor for more
        for sched, v, _ in left:
            fewest[sched] = min(v, fewest.get(sched, v))
        fitting: dict[Schedule, tuple] = {}
        for sched, v, pipe in left:
            if sched not in fitting:  # once per schedule (the leaves check their own chunk count)
                fitting[sched] = _fitting_rests(search, n, sp, sched, fewest[sched], live)
            if not fitting[sched]:
                _count(search, "memory floor")
                continue
            # per family, the least over recompute modes with a setting that may fit
            least: dict[str, float] = {}
            for rc, rests in fitting[sched]:
                pipe_rc = pipe if rc is Recompute.NONE else f.pipe_s(sp, sched, v, rc)
                for fam, rest in rests:
                    least[fam] = min(pipe_rc + rest, least.get(fam, float("inf")))
            floors = tuple((fam, t * per_s) for fam, t in least.items())
            if _dropped(search, floors):
                continue
            out.append(_Group(floors, n, sp, sched, v))
    return out


def _fitting_rests(search: Search, n: _Node, sp: bool, sched: Schedule, v: int, zeros: Sequence[Sharding]) -> tuple:
    """((recompute, ((family, least rest), ...)), ...) over the (recompute, sharding) settings of
    one (sp, schedule) whose memory floor fits: a group's floor is the least of its leaves
    that may be priced (at 175B, no recompute seldom fits, so its pipeline time is not a
    floor of what runs). Where none fits, the leanest are noted, as _leaves would."""
    f, c, out = n.f, n.c, []
    for rc in n.knobs[2]:
        least: dict[str, float] = {}
        for z in zeros:
            fam = search.family(c, z)
            need = f.bytes(sp, sched, rc, z, v)
            if need > f.capacity_bytes:
                search.note_lean(fam, need, partial(_setting, c, n.b, f.m, sched, v, sp, rc, z, n.knobs[4][-1]))
                continue
            least[fam] = min(f.rest_s(sp, rc, z), least.get(fam, float("inf")))
        if least:
            out.append((rc, tuple(least.items())))
    return tuple(out)


def _leaves(search: Search, g: _Group) -> list[_Leaf]:
    """A group's (recompute, sharding) settings the step-time and memory floors leave."""
    n, f, out = g.node, g.node.f, []
    _, sps, rcs, zeros, periods = n.knobs
    per_s = _score_floor(search, f, 1.0)  # the objective is linear in the step time
    fams = [(zero, fam, search.limit(fam), f.optimizer_s(sps[0], Recompute.NONE, zero))
            for zero in zeros for fam in (search.family(n.c, zero),)]
    for rc in rcs:
        pipe = f.pipe_s(g.sp, g.sched, g.v, rc)
        for zero, fam, limit, optimizer in fams:
            # _beaten for one family, its limit read once per group; the optimizer alone
            # first, so synchronisation is priced only where it can decide
            if (floor := (pipe + optimizer) * per_s) > limit or (floor := (pipe + f.rest_s(g.sp, rc, zero)) * per_s) > limit:
                _count(search, "step-time floor")
                search.note_bound(fam, floor)
                continue
            need = f.bytes(g.sp, g.sched, rc, zero, g.v)
            if need > f.capacity_bytes:
                _count(search, "memory floor")
                search.note_lean(fam, need, partial(_setting, n.c, n.b, f.m, g.sched, g.v, g.sp, rc, zero, periods[-1]))
                continue
            out.append(_Leaf(fam, g, rc, zero, floor))
    return out


def _push(search: Search, item: Any) -> None:
    """Push a search item (structure, node, group, leaf) keyed by its least family floor."""
    heapq.heappush(search.heap, (min(floor for _, floor in item.floors), next(search.ties), item))


def _price_leaf(search: Search, leaf: _Leaf) -> None:
    """Price a setting the floors could not rule out, unless its exact memory (where the cost
    model's layout is fixed) does not fit."""
    g = leaf.group
    over = g.node.f.excess_bytes(g.sp, g.sched, g.v, leaf.rc, leaf.zero)
    if over > 0:
        _count(search, "memory floor")
        search.note_lean(leaf.fam, g.node.f.capacity_bytes + over, lambda: leaf.strategies()[-1])
        return
    for s in leaf.strategies():
        search.consider(s)


def _setting(c: dict, b: int, m: int, sched: Schedule, v: int, sp: bool, rc: Recompute, zero: Sharding, period: int) -> Strategy:
    return Strategy(dp=c["dp"], tp=c["tp"], pp=c["pp"], **zero.fields(), microbatch=b if m > 1 else None, schedule=sched,
                    virtual_stages=v, recompute=rc, sequence_parallel=sp, data_partition=c["data_partition"], sync=c["sync"],
                    sync_every=period, subnet=c["subnet"], threads=c["threads"], ep=c.get("ep", 1), cp=c.get("cp", 1))


def _note_leanest(search: Search, n: _Node, families: Optional[set[str]] = None) -> None:
    """A node the memory floor removed (or, with `families`, removed for those families): its
    least-memory setting per ZeRO stage (each stage may be another family: DDP, ZeRO-1/2,
    ZeRO-3)."""
    c, f = n.c, n.f
    pairs, sps, rcs, zeros, periods = n.knobs
    sched, v = min(pairs, key=lambda p: (p[0] is Schedule.GPIPE, p[1]))
    for zero in zeros:
        if families is not None and search.family(c, zero) not in families:
            continue
        sp, rc = min(((sp, rc) for sp in sps for rc in rcs), key=lambda k: f.bytes(k[0], sched, k[1], zero, v))
        search.note_lean(search.family(c, zero), f.bytes(sp, sched, rc, zero, v),
                         partial(_setting, c, n.b, f.m, sched, v, sp, rc, zero, periods[-1]))


def _pinned_schedules(search: Search, c: dict, m: int) -> list[tuple[Schedule, int]]:
    """(schedule, virtual stages) pairs of the space, or those the --fix values pin."""
    pairs = schedules(search.ctx, c, m)
    if search.fixed.get("schedule") is Schedule.DUALPIPEV and c["pp"] > 1:  # dominated by ZB-V, so only when asked
        pairs = pairs + [(Schedule.DUALPIPEV, 2)]
    if "schedule" in search.fixed:
        pairs = [p for p in pairs if p[0] is search.fixed["schedule"]]
    if "virtual_stages" in search.fixed:
        v = search.fixed["virtual_stages"]
        pairs = [p for p in pairs if p[1] == v] or ([(Schedule.INTERLEAVED, v)] if v > 1 and c["pp"] > 1 and "schedule" not in search.fixed else [])
    return pairs


def _seed(search: Search) -> None:
    """Push every structure the --fix values and a pipeline's micro-batch need leave."""
    ctx, fixed = search.ctx, search.fixed
    for c in structures(ctx, search.pruned):
        if any(k in c and c[k] != v for k, v in fixed.items()):
            continue
        if not microbatches(ctx, c):  # a pipeline needs pp micro-batches of at least one sample each
            local = ctx.global_batch // c["dp"]
            search.family_problem.setdefault(search.family(c, Sharding()), f"per-replica batch {local} < pp {c['pp']}: a pipeline of "
                                             f"{c['pp']} stages needs at least {c['pp']} micro-batches (dp={c['dp']})")
            _count(search, "batch-below-pp")
            continue
        found = _structure(search, c)
        if found is not None:
            _push(search, found)


def _run(search: Search) -> None:
    """Best-first: pop the least floor, skip it if beaten, else split it (or price a leaf)."""
    while search.heap:
        _, _, item = heapq.heappop(search.heap)
        if _dropped(search, item.floors):
            continue
        if isinstance(item, _Leaf):
            _price_leaf(search, item)
        elif isinstance(item, _Group):
            for leaf in _leaves(search, item):
                _push(search, leaf)
        elif isinstance(item, _Structure):
            if _fits_somewhere(search, item):
                for n in _nodes(search, item):
                    _push(search, n)
        elif item.fitting:
            for group in _groups(search, item):
                _push(search, group)
        else:  # back on the heap at its tighter floors: split when they are the least
            floors = _fitting_floors(search, item)
            if not floors:
                _count(search, "memory floor")
                _note_leanest(search, item)
                continue
            _push(search, replace(item, floors=floors, fitting=True))


def plan(recipe: Recipe, cluster: Cluster, *, top_k: int = 5, fix: Optional[Strategy | dict] = None,
         objective: Objective = Objective.TIME, profile: Optional[ModelProfile] = None, advise: bool = True) -> PlanResult:
    t_profile = time.perf_counter()
    model = CostModel.for_recipe(recipe, cluster, profile)
    t0 = time.perf_counter()
    profile_s = t0 - t_profile
    fixed = _fixed(fix)
    ctx = SearchContext(model.profile, cluster, recipe.training.global_batch, recipe.training.precision,
                        max_tp=2 * cluster.devices_per_node, pinned_devices=_pinned_devices(fixed, cluster.devices, recipe.training.global_batch))
    search = Search(model, ctx, objective, top_k, fixed)
    with cyclic_gc_paused():
        _seed(search)
        _run(search)
        for fam, (_, s) in list(search.lean.items()):
            if fam not in search.family_smallest:
                search.consider(s)
    seconds = time.perf_counter() - t0
    if not search.best:
        needed = _nodes_needed(recipe, model, fixed, objective) if advise else None
        raise explain.nothing_fits(search.family_smallest, cluster, fixed, needed)
    chosen = [_with_layout(e) for e in search.best[:top_k]]
    plans = tuple(Plan(i + 1, e, family_of(e.strategy), explain.winner(e, model, cluster, i, chosen[0]))
                  for i, e in enumerate(chosen))
    rejected = explain.rejected(search.family_best, search.best[0], model, cluster, objective, search.family_bound,
                                search.family_smallest, search.family_problem, fixed)
    return PlanResult(plans, rejected, search.candidates, seconds, dict(search.pruned), cluster, profile_s, model.profile,
                      recipe_fingerprint(recipe))


def _nodes_needed(recipe: Recipe, model: CostModel, fixed: dict[str, Any], objective: Objective,
                  growth: int = 64) -> Optional[tuple[int, Strategy]]:
    """The fewest whole nodes of this kind on which a plan fits, and plan 1 there: nodes double
    until one fits, then bisection between the last that did not and the first that did
    (each answer is a plan actually found, so the advice holds however many devices the
    recipe names now). None when --fix pins the device count, when the framework's reserve
    alone fills a device, or when nothing fits on `growth` times the nodes."""
    cluster, profile = model.cluster, model.profile
    if "dp" in fixed or cluster.device.shared_memory or model.reserve_bytes >= cluster.device.memory_bytes:
        return None
    most = cluster.nodes * growth

    def fitting(nodes: int) -> Optional[Strategy]:
        try:
            return plan(recipe, replace(cluster, nodes=nodes), top_k=1, fix=fixed, objective=objective, profile=profile,
                        advise=False).plans[0].strategy
        except InputError:
            return None

    lo, hi = cluster.nodes, cluster.nodes * 2
    while hi <= most and (found := fitting(hi)) is None:
        lo, hi = hi, hi * 2
    if hi > most:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        better = fitting(mid)
        if better is None:
            lo = mid
        else:
            hi, found = mid, better
    return hi, found


def _with_layout(e: Estimate) -> Estimate:
    """Write the stage layout the cost model balanced into the plan, so it runs as predicted."""
    if e.stages is None or e.strategy.stages is not None:
        return e
    return replace(e, strategy=replace(e.strategy, stages=e.stages))


def _pinned_devices(fixed: dict[str, Any], devices: int, global_batch: int) -> Optional[int]:
    """The device count --fix's degrees imply: dp * tp * pp * threads when dp is fixed, else
    the most replicas of the fixed degrees that fit and divide the global batch (BLOOM's
    tp=4,pp=12 on 1,024 GPUs and batch 1536: 16 replicas of 48)."""
    unit = 1
    for key in ("tp", "pp", "threads"):
        unit *= fixed.get(key, 1)
    if "dp" in fixed:
        return unit * fixed["dp"]
    if unit == 1:
        return None
    return next((unit * k for k in range(devices // unit, 0, -1) if global_batch % k == 0), None)


def _fixed(fix: Optional[Strategy | dict]) -> dict[str, Any]:
    if fix is None:
        return {}
    if isinstance(fix, Strategy):
        neutral = Strategy()
        return {k: getattr(fix, k) for k in fix.to_dict() if getattr(fix, k) != getattr(neutral, k)}
    return dict(fix)


def parse_fix(text: str) -> dict[str, Any]:
    """--fix "tp=8,pp=16": the knobs named, parsed like a strategy, nothing else."""
    keys = [item.partition("=")[0].strip() for item in text.split(",") if item.strip()]
    s = Strategy.parse(text, field_path="--fix")
    return {k: getattr(s, k) for k in keys}
