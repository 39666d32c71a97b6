"""Data parallelism in the search: dp takes the devices left; ZeRO stages per structure."""

from __future__ import annotations

from autopar.spec.enums import DataPartition, Sync
from autopar.spec.strategy import Strategy
from autopar.techniques.base import Dimension, Partial, Predicate, RuleInput
from autopar.techniques.data.rules import check_batch_split


def dp_values(ctx, c: Partial) -> list[int]:
    return [c["devices"] // (c["threads"] * c["tp"] * c["pp"])]


def zero_stages(c: Partial) -> list[int]:
    """ZeRO stages, cheapest first; only for synchronous sample-parallel replicas."""
    if c["dp"] == 1 or c["sync"] is Sync.ASYNC or c["subnet"] or c["data_partition"] is DataPartition.FEATURES:
        return [0]
    return [0, 1, 2, 3]


DIMENSIONS = (Dimension("dp", dp_values, order=70),)
PREDICATES = (
    Predicate("dp divides the global batch", ("sync", "data_partition", "threads", "dp"),
              lambda ctx, c: check_batch_split(_structure(c), RuleInput(ctx.facts, ctx.global_batch)) is None),
)


def _structure(c: Partial) -> Strategy:
    return Strategy(dp=c["dp"], threads=c["threads"], sync=c["sync"], data_partition=c["data_partition"])
