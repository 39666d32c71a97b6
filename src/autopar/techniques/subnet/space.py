"""Independent subnetworks in the search (at most MAX_SUBNET_WORKERS workers)."""

from __future__ import annotations

from autopar.spec.strategy import Strategy
from autopar.techniques.base import Dimension, Partial, Predicate, RuleInput
from autopar.techniques.subnet.rules import check_priced_subnet, check_subnet

MAX_SUBNET_WORKERS = 8  # the published regime of independent subnetwork training (Yuan et al. 2022: 2-8 workers)


def _ok(ctx, c: Partial) -> bool:
    s = Strategy(dp=c["dp"], tp=c["tp"], pp=c["pp"], sync=c["sync"], data_partition=c["data_partition"], subnet=c["subnet"])
    if s.subnet and s.dp > MAX_SUBNET_WORKERS:  # search restriction
        return False
    r = RuleInput(ctx.facts, ctx.global_batch)
    return check_subnet(s, r) is None and check_priced_subnet(s, r) is None


DIMENSIONS = (Dimension("subnet", lambda ctx, c: [False, True], order=30),)
PREDICATES = (
    Predicate(f"subnetwork training needs MLP Linear pairs, only dp, and at most {MAX_SUBNET_WORKERS} workers (the published regime)",
              ("subnet", "sync", "data_partition", "tp", "pp", "dp"), _ok),
)
