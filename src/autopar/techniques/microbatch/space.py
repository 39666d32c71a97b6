"""Micro-batch sizes in the search."""

from __future__ import annotations

from autopar.spec.enums import DataPartition, Sync
from autopar.techniques.base import Partial
from autopar.util import divisors


def microbatches(ctx, c: Partial) -> list[int]:
    """Micro-batch sizes, largest first. Without a pipeline, splitting the batch only saves
    memory; with one, more micro-batches shrink the bubble, so sizes down to 1 are tried.
    Subnetworks and Hogwild workers take no micro-batches (their rules refuse them)."""
    local = ctx.global_batch if c["data_partition"] is DataPartition.FEATURES else ctx.global_batch // c["dp"]
    if c["subnet"] or (c["sync"] is Sync.ASYNC and c["threads"] > 1):
        return [local]
    sizes = [b for b in divisors(local) if (b & (b - 1) == 0 and b <= 64) or b == local]  # powers of two, or all
    if c["pp"] > 1:
        sizes = [b for b in sizes if local // b >= c["pp"]]
    return sorted(sizes, reverse=True)
