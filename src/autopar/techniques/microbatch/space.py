"""Micro-batch sizes in the search."""

from __future__ import annotations

from autopar.spec.enums import DataPartition, Sync
from autopar.techniques.base import Partial
from autopar.util import divisors


def microbatches(ctx, c: Partial) -> list[int]:
    """Every micro-batch size that divides the per-replica batch, largest first (with a
    pipeline, those leaving at least pp micro-batches). Subnetworks and Hogwild workers
    take no micro-batches (their rules refuse them)."""
    local = ctx.global_batch if c["data_partition"] is DataPartition.FEATURES else ctx.global_batch // c["dp"]
    if c["subnet"] or (c["sync"] is Sync.ASYNC and c["threads"] > 1):
        return [local]
    sizes = divisors(local)
    if c["pp"] > 1:
        sizes = [b for b in sizes if local // b >= c["pp"]]
    return sorted(sizes, reverse=True)
