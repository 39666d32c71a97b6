"""Data parallelism in the search: dp takes the devices left; how its states are sharded.

The sharding knob is searched inside each structure by the planner: a ZeRO stage, with
HSDP's shard group (ZeRO-2/3 inside a node, replicas across nodes) and host offload
(techniques/offload) as variants of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from autopar.cost.collectives import place
from autopar.spec.enums import DataPartition, Sync
from autopar.spec.strategy import Strategy
from autopar.techniques.base import Dimension, Partial, Predicate, RuleInput
from autopar.techniques.data.rules import check_batch_split
from autopar.techniques.offload.space import offload_allowed


@dataclass(frozen=True, order=True)
class Sharding:
    """How a replica's model states are split: the Strategy fields zero, dp_shard, offload."""

    zero: int = 0
    dp_shard: Optional[int] = None  # None: over every dp rank
    offload: bool = False

    def fields(self) -> dict[str, Any]:
        return {"zero": self.zero, "dp_shard": self.dp_shard, "offload": self.offload}


def dp_values(ctx, c: Partial) -> list[int]:
    return [c["devices"] // (c["threads"] * c["tp"] * c["pp"] * c.get("cp", 1))]


def shardings(ctx, c: Partial) -> list[Sharding]:
    """ZeRO stages, cheapest first, for synchronous sample-parallel replicas; then HSDP with
    the dp ranks of one node as the shard group when dp spans nodes; then ZeRO-3 with host
    offload (also for one replica: ZeRO-Offload's single-device case)."""
    synchronous = c["sync"] is Sync.SYNC and not c["subnet"] and c["data_partition"] is DataPartition.SAMPLES
    replicas = c["dp"] > 1 and synchronous
    out = [Sharding(0)]
    if c.get("cp", 1) > 1:  # context parallel: ZeRO over the dp x cp ranks, no HSDP or offload (techniques/context/rules.py)
        stages = [0, 1, 2, 3] if c["tp"] == 1 and c["pp"] == 1 else [2, 3]
        return [Sharding(z) for z in stages]
    if replicas and c.get("ep", 1) > 1:  # split experts: DDP or FSDP2 of the rest (techniques/expert/rules.py)
        return out + [Sharding(2), Sharding(3)]
    if replicas:
        out += [Sharding(1), Sharding(2), Sharding(3)]
        dpn = ctx.cluster.devices_per_node
        shard = place(c["dp"], c["threads"] * c["tp"], dpn, min(dpn, c["devices"])).per_node
        if 1 < shard < c["dp"] and c["dp"] % shard == 0:
            out += [Sharding(2, shard), Sharding(3, shard)]
    if synchronous and c["threads"] == 1 and offload_allowed(ctx):
        out.append(Sharding(3, None, True))
    return out


def pinned_shardings(values: list[Sharding], fixed: dict[str, Any]) -> list[Sharding]:
    """The shardings with every --fix value among zero / dp_shard / offload; a fixed value
    the list lacks is searched anyway (ZeRO-1 with offload is refused by the rules)."""
    keys = [k for k in ("zero", "dp_shard", "offload") if k in fixed]
    if not keys:
        return values
    kept = [z for z in values if all(getattr(z, k) == fixed[k] for k in keys)]
    return kept or [Sharding(**{**Sharding().fields(), **{k: fixed[k] for k in keys}})]


DIMENSIONS = (Dimension("dp", dp_values, order=70),)
PREDICATES = (
    Predicate("dp divides the global batch", ("sync", "data_partition", "threads", "dp"),
              lambda ctx, c: check_batch_split(_structure(c), RuleInput(ctx.facts, ctx.global_batch)) is None),
)


def _structure(c: Partial) -> Strategy:
    return Strategy(dp=c["dp"], threads=c["threads"], sync=c["sync"], data_partition=c["data_partition"])
