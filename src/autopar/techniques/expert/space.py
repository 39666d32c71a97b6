"""Expert parallelism in the search: ep takes each divisor of dp that divides the experts."""

from __future__ import annotations

from autopar.spec.enums import DataPartition, Sync
from autopar.techniques.base import Dimension, Partial


def ep_values(ctx, c: Partial) -> list[int]:
    """1, and for a model with stacked experts (models/moe.py expert_modules) under synchronous sample-parallel
    replicas every ep > 1 dividing both dp and the experts."""
    f = ctx.facts
    if not f.expert_modules or c["sync"] is not Sync.SYNC or c["subnet"] or c["data_partition"] is not DataPartition.SAMPLES:
        return [1]
    return [e for e in range(1, c["dp"] + 1) if c["dp"] % e == 0 and f.experts % e == 0]


DIMENSIONS = (Dimension("ep", ep_values, order=75),)
