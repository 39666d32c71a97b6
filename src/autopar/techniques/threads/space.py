"""Shared-memory workers in the search: thread counts that divide the devices of one node."""

from __future__ import annotations

from autopar.spec.strategy import Strategy
from autopar.techniques.base import Dimension, Partial, Predicate, RuleInput
from autopar.techniques.threads.rules import check_hogwild_batch, check_priced_threads
from autopar.util import divisors


def threads_values(ctx, c: Partial) -> list[int]:
    if not ctx.cluster.device.shared_memory:
        return [1]
    return [t for t in divisors(c["devices"]) if t <= ctx.cluster.devices_per_node]


DIMENSIONS = (Dimension("threads", threads_values, order=40),)
PREDICATES = (
    Predicate("threads combine only with dp (what the cost model prices)", ("threads", "tp", "pp"),
              lambda ctx, c: check_priced_threads(Strategy(threads=c["threads"], tp=c["tp"], pp=c["pp"]),
                                                  RuleInput(ctx.facts, ctx.global_batch)) is None),
)
PREDICATES += (
    Predicate("Hogwild workers divide the global batch", ("sync", "threads", "dp"),
              lambda ctx, c: check_hogwild_batch(Strategy(dp=c["dp"], threads=c["threads"], sync=c["sync"]),
                                                 RuleInput(ctx.facts, ctx.global_batch)) is None),
)
