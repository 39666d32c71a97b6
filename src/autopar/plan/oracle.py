"""Brute force: every point of the declared search space, priced by the same cost model.

The reference the planner's branch and bound is checked against
(tests/test_planner_oracle.py, benchmarks/plan_oracle.py). No floors, no ordering: each
structure, micro-batch size, (schedule, chunks), sequence parallel, recompute mode, ZeRO
stage (with HSDP and offload variants) and averaging period the space modules list is estimated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from autopar.cost.estimate import Estimate
from autopar.cost.model import CostModel
from autopar.plan.planner import _fixed, _pinned_devices, _pinned_schedules, _setting
from autopar.plan.result import Objective, rank_key
from autopar.plan.space import SearchContext, structures
from autopar.plan.state import Search
from autopar.profile.types import ModelProfile
from autopar.spec.cluster import Cluster
from autopar.spec.recipe import Recipe
from autopar.techniques.data.space import pinned_shardings, shardings
from autopar.techniques.local_sgd.space import sync_periods
from autopar.techniques.microbatch.space import microbatches
from autopar.techniques.recompute.space import recomputes
from autopar.techniques.tensor.space import sequence_parallel


@dataclass(frozen=True)
class BruteForce:
    best: list[Estimate]  # fitting estimates, best first (rank_key)
    candidates: int  # valid strategies priced


def brute_force(recipe: Recipe, cluster: Cluster, *, fix: Optional[dict] = None, objective: Objective = Objective.TIME,
                profile: Optional[ModelProfile] = None, keep: int = 20) -> BruteForce:
    model = CostModel.for_recipe(recipe, cluster, profile)
    fixed = _fixed(fix)
    ctx = SearchContext(model.profile, cluster, recipe.training.global_batch, recipe.training.precision,
                        max_tp=2 * cluster.devices_per_node,
                        pinned_devices=_pinned_devices(fixed, cluster.devices, recipe.training.global_batch))
    search = Search(model, ctx, objective, keep, fixed)
    fitting: list[Estimate] = []
    for c in structures(ctx):
        local = ctx.global_batch if c["data_partition"].value == "features" else ctx.global_batch // c["dp"]
        for b in microbatches(ctx, c):
            m = local // b
            for sched, v in _pinned_schedules(search, c, m):
                for sp in sequence_parallel(ctx, c):
                    for rc in recomputes(ctx):
                        for zero in pinned_shardings(shardings(ctx, c), fixed):
                            for period in sync_periods(c):
                                e = search.consider(_setting(c, b, m, sched, v, sp, rc, zero, period))
                                if e is not None and e.fits:
                                    fitting.append(e)
    fitting.sort(key=lambda e: rank_key(e, objective))
    return BruteForce(fitting[:keep], search.candidates)
