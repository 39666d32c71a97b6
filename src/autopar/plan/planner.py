"""`plan(recipe, cluster)`: search the space, rank by time to train, explain.

Search: structures from plan.space in order of decreasing device count; inside each,
the knobs (micro-batch, schedule, sequence parallel, recompute, ZeRO stage). Three
named prunings keep it fast without losing the optimum:
  - bound: a structure whose lower-bound time (its busiest rank's compute and
    tensor-parallel time, no bubble, no synchronisation) cannot beat both the K-th
    best plan and its family's best is skipped;
  - recompute-when-needed: recomputation is tried none, selective, full; the first
    that fits without ZeRO ends the list (more recompute only adds work);
  - micro-batch-when-needed: without a pipeline, smaller micro-batches only save
    memory; once the largest fits without recompute, smaller ones are skipped;
  - micro-batch-too-big: with a pipeline, sizes go up from 1; once a size fits in no
    way (any schedule, recompute or ZeRO stage), larger ones cannot either;
  - fits-nowhere: a structure whose least-memory candidate (smallest micro-batch, most
    recompute, highest ZeRO stage) does not fit is not searched further.
Every ZeRO stage is evaluated: sharding adds communication but also divides the
optimizer step, so a higher stage can be faster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence

from autopar.cost.estimate import Estimate
from autopar.cost.model import CostModel
from autopar.plan import explain
from autopar.plan.families import family_of
from autopar.plan.result import Objective, Plan, PlanResult, rank_key, recipe_fingerprint, score
from autopar.plan.space import SearchContext, structures
from autopar.profile.types import ModelProfile
from autopar.spec.cluster import Cluster
from autopar.spec.enums import Recompute, Schedule
from autopar.spec.recipe import Recipe
from autopar.spec.strategy import Strategy
from autopar.techniques import plan_problem
from autopar.techniques.data.space import zero_stages
from autopar.techniques.local_sgd.space import sync_periods
from autopar.techniques.microbatch.space import microbatches
from autopar.techniques.pipeline.space import schedules
from autopar.techniques.recompute.space import recomputes
from autopar.techniques.tensor.space import sequence_parallel


@dataclass
class _Search:
    model: CostModel
    ctx: SearchContext
    objective: Objective
    top_k: int
    fixed: dict[str, Any]
    best: list[Estimate] = field(default_factory=list)
    family_best: dict[str, Estimate] = field(default_factory=dict)
    family_smallest: dict[str, Estimate] = field(default_factory=dict)
    candidates: int = 0
    fitting: int = 0  # candidates that fit in memory
    pruned: dict[str, int] = field(default_factory=dict)
    family_bound: dict[str, float] = field(default_factory=dict)  # least lower bound of pruned structures (score)
    family_problem: dict[str, str] = field(default_factory=dict)  # why a family's structures cannot run at all
    seen: dict[Strategy, Optional[Estimate]] = field(default_factory=dict)

    def consider(self, s: Strategy) -> Optional[Estimate]:
        if not self.matches_fixed(s):
            return None
        if s in self.seen:  # the leanest-fit check and the knob loop may both price one strategy
            return self.seen[s]
        e = self._price(s)
        self.seen[s] = e
        return e

    def _price(self, s: Strategy) -> Optional[Estimate]:
        problem = plan_problem(s, self.ctx.facts, self.ctx.global_batch, self.ctx.precision, self.ctx.cluster)
        if problem is not None:
            self.pruned["invalid"] = self.pruned.get("invalid", 0) + 1
            return None
        e = self.model.estimate(s, check=False)
        self.candidates += 1
        fam = family_of(s)
        key = rank_key(e, self.objective)
        if fam not in self.family_best or key < rank_key(self.family_best[fam], self.objective):
            self.family_best[fam] = e
        if fam not in self.family_smallest or e.memory_per_device_bytes < self.family_smallest[fam].memory_per_device_bytes:
            self.family_smallest[fam] = e
        if e.fits:
            self.fitting += 1
            self.best.append(e)
            self.best.sort(key=lambda x: rank_key(x, self.objective))
            del self.best[self.top_k * 4:]
        return e

    def matches_fixed(self, s: Strategy) -> bool:
        """Whether `s` has every --fix value; a micro-batch equal to the per-replica batch
        is the same strategy whether spelled microbatch=B or left out (None)."""
        for k, v in self.fixed.items():
            if k == "microbatch":
                local = s.local_batch(self.ctx.global_batch)
                if s.microbatch_size(self.ctx.global_batch) != (v if v is not None else local):
                    return False
            elif getattr(s, k) != v:
                return False
        return True

    def pinned(self, key: str, values: Sequence) -> list:
        """A search dimension's values, or only the --fix value of it (searched even where
        the grid has no such value: a neutral one, gpipe, virtual_stages=3)."""
        return [self.fixed[key]] if key in self.fixed else list(values)

    def threshold(self, fam_hint: Optional[str]) -> float:
        kth = score(self.best[self.top_k - 1], self.objective) if len(self.best) >= self.top_k else float("inf")
        fam = self.family_best.get(fam_hint) if fam_hint else None
        fam_score = score(fam, self.objective) if fam is not None and fam.fits else float("inf")
        return max(kth, fam_score)


def _lower_bound(search: _Search, c: dict) -> float:
    """A time no strategy of structure c can beat: its busiest rank's compute and
    tensor-parallel time per sample at the most efficient micro-batch, times the samples
    that rank must process (no bubble, no synchronisation, no memory limit)."""
    m = search.model
    ideal = m.model_flops_per_sample * search.ctx.global_batch / (c["devices"] * m.peak * m.eff.gemm_max)
    if c["data_partition"].value == "samples" and not c["subnet"]:
        b = microbatches(search.ctx, c)[0] if c["pp"] == 1 else min(16, microbatches(search.ctx, c)[0])
        s = Strategy(dp=c["dp"], tp=c["tp"], pp=c["pp"], threads=c["threads"], microbatch=b,
                     sequence_parallel=sequence_parallel(search.ctx, c)[0])
        topo = m.topology(s)
        table = m.table(s, b, topo, m.rate(s, topo.used_per_node))
        per_sample = (table.time[-1] - sum(x.recompute_s for x in table.costs)) / b
        ideal = max(ideal, per_sample * search.ctx.global_batch / (c["dp"] * c["pp"]))
    steps = m.work.steps
    if search.objective is Objective.THROUGHPUT:
        return ideal
    if search.objective is Objective.DEVICES:
        return ideal * steps * c["devices"]
    return ideal * steps


def _search_structure(search: _Search, c: dict) -> None:
    """Knobs inside one structure (see the module docstring for the prunings)."""
    ctx = search.ctx
    local = ctx.global_batch if c["data_partition"].value == "features" else ctx.global_batch // c["dp"]
    sizes = microbatches(ctx, c)
    if sizes and "microbatch" in search.fixed:
        b = search.fixed["microbatch"] or local
        sizes = [b] if local % b == 0 and (c["pp"] == 1 or local // b >= c["pp"]) else []
    if not sizes or not _leanest_fits(search, c, sizes[-1], local):
        search.pruned["fits-nowhere"] = search.pruned.get("fits-nowhere", 0) + 1
        return
    for b in sizes if c["pp"] == 1 else reversed(sizes):  # with a pipeline: smallest first
        m = local // b
        fits_before = search.fitting
        plain = [_search_memory_knobs(search, c, b, m, sched, v, sp)
                 for sched, v in _pinned_schedules(search, c, m) for sp in search.pinned("sequence_parallel", sequence_parallel(ctx, c))]
        if c["pp"] == 1 and any(plain):
            search.pruned["micro-batch-when-needed"] = search.pruned.get("micro-batch-when-needed", 0) + 1
            break
        if c["pp"] > 1 and search.fitting == fits_before:  # activation memory grows with b
            search.pruned["micro-batch-too-big"] = search.pruned.get("micro-batch-too-big", 0) + 1
            break


def _pinned_schedules(search: _Search, c: dict, m: int) -> list[tuple[Schedule, int]]:
    """(schedule, virtual stages) pairs of the grid, or those the --fix values pin: a fixed
    schedule with the grid's chunk counts (or 1), a fixed chunk count with interleaved."""
    pairs = schedules(search.ctx, c, m)
    if "schedule" not in search.fixed and "virtual_stages" not in search.fixed:
        return pairs
    sched = search.fixed.get("schedule")
    v = search.fixed.get("virtual_stages")
    if sched is not None and v is not None:
        return [(sched, v)]
    if sched is not None:
        vs = sorted({w for s, w in pairs if s is sched} | ({1} if sched is not Schedule.INTERLEAVED else set()))
        return [(sched, w) for w in vs or [2]]
    return [(Schedule.INTERLEAVED if v > 1 else Schedule.ONE_F_ONE_B, v)]


def _leanest_fits(search: _Search, c: dict, b: int, local: int) -> bool:
    """The structure's least-memory candidate: smallest micro-batch, 1F1B, most recompute,
    highest ZeRO stage, longest period. If it does not fit, nothing of the structure does."""
    ctx = search.ctx
    lean = Strategy(dp=c["dp"], tp=c["tp"], pp=c["pp"], zero=zero_stages(c)[-1], microbatch=b if local // b > 1 else None,
                    recompute=recomputes(ctx)[-1], sequence_parallel=sequence_parallel(ctx, c)[-1],
                    data_partition=c["data_partition"], sync=c["sync"], sync_every=sync_periods(c)[-1],
                    subnet=c["subnet"], threads=c["threads"])
    e = search.consider(lean)
    return e is None or e.fits


def _search_memory_knobs(search: _Search, c: dict, b: int, m: int, sched, v: int, sp: bool) -> bool:
    """Recompute (none, selective, full) x ZeRO stage x synchronisation period; True when the
    plain version (no recompute, zero 0) fits, which ends the recompute list."""
    for rc in search.pinned("recompute", recomputes(search.ctx)):
        plain_fits = False
        for zero in search.pinned("zero", zero_stages(c)):
            for period in search.pinned("sync_every", sync_periods(c)):
                s = Strategy(dp=c["dp"], tp=c["tp"], pp=c["pp"], zero=zero, microbatch=b if m > 1 else None,
                             schedule=sched, virtual_stages=v, recompute=rc, sequence_parallel=sp,
                             data_partition=c["data_partition"], sync=c["sync"], sync_every=period,
                             subnet=c["subnet"], threads=c["threads"])
                e = search.consider(s)
                plain_fits |= e is not None and e.fits and zero == 0
        if plain_fits:
            search.pruned["recompute-when-needed"] = search.pruned.get("recompute-when-needed", 0) + 1
            return rc is Recompute.NONE
    return False


def plan(recipe: Recipe, cluster: Cluster, *, top_k: int = 5, fix: Optional[Strategy | dict] = None,
         objective: Objective = Objective.TIME, profile: Optional[ModelProfile] = None) -> PlanResult:
    t_profile = time.perf_counter()
    model = CostModel.for_recipe(recipe, cluster, profile)
    t0 = time.perf_counter()
    profile_s = t0 - t_profile
    fixed = _fixed(fix)
    ctx = SearchContext(model.profile, cluster, recipe.training.global_batch, recipe.training.precision,
                        max_tp=2 * cluster.devices_per_node, pinned_devices=_pinned_devices(fixed, cluster.devices, recipe.training.global_batch))
    search = _Search(model, ctx, objective, top_k, fixed)
    for c in structures(ctx, search.pruned):
        if any(k in c and c[k] != v for k, v in fixed.items()):
            continue
        fam = family_of(Strategy(dp=c["dp"], tp=c["tp"], pp=c["pp"], sync=c["sync"], data_partition=c["data_partition"],
                                 subnet=c["subnet"], threads=c["threads"]))
        if not microbatches(ctx, c):  # a pipeline needs pp micro-batches of at least one sample each
            local = ctx.global_batch // c["dp"]
            search.family_problem.setdefault(fam, f"per-replica batch {local} < pp {c['pp']}: a pipeline of {c['pp']} stages "
                                                  f"needs at least {c['pp']} micro-batches (dp={c['dp']})")
            search.pruned["batch-below-pp"] = search.pruned.get("batch-below-pp", 0) + 1
            continue
        bound = _lower_bound(search, c)
        if bound > search.threshold(fam):
            search.pruned["bound"] = search.pruned.get("bound", 0) + 1
            search.family_bound[fam] = min(bound, search.family_bound.get(fam, float("inf")))
            continue
        _search_structure(search, c)
    seconds = time.perf_counter() - t0
    if not search.best:
        raise explain.nothing_fits(search.family_smallest, cluster, fixed)
    chosen = [_with_layout(e) for e in search.best[:top_k]]
    plans = tuple(Plan(i + 1, e, family_of(e.strategy), explain.winner(e, model, cluster, i, chosen[0]))
                  for i, e in enumerate(chosen))
    rejected = explain.rejected(search.family_best, search.best[0], model, cluster, objective, search.family_bound,
                                search.family_smallest, search.family_problem, fixed)
    return PlanResult(plans, rejected, search.candidates, seconds, dict(search.pruned), cluster, profile_s, model.profile,
                      recipe_fingerprint(recipe))


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
