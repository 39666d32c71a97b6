"""Synchronous or asynchronous updates in the search, and the averaging period H."""

from __future__ import annotations

from autopar.spec.enums import Sync
from autopar.spec.strategy import Strategy
from autopar.techniques.base import Dimension, Partial, Predicate, RuleInput
from autopar.techniques.local_sgd.rules import check_async


def sync_periods(c: Partial) -> tuple[int, ...]:
    """Steps between parameter averaging for local SGD and subnetwork training (H): longer
    saves communication and costs statistical efficiency (local_sgd.cost, subnet.cost)."""
    if c["sync"] is Sync.ASYNC and c["threads"] == 1 or c["subnet"]:
        return (2, 4, 8)
    return (4,) if c["sync"] is Sync.ASYNC else (1,)


def _ok(ctx, c: Partial) -> bool:
    s = Strategy(dp=c["dp"], tp=c["tp"], pp=c["pp"], threads=c["threads"], sync=c["sync"])
    return check_async(s, RuleInput(ctx.facts, ctx.global_batch)) is None


DIMENSIONS = (Dimension("sync", lambda ctx, c: [Sync.SYNC, Sync.ASYNC], order=10),)
PREDICATES = (
    Predicate("asynchronous updates need independent replicas (no tp, no pp) and several workers (Hogwild: dp=1)",
              ("sync", "tp", "pp", "dp", "threads"), _ok),
)
