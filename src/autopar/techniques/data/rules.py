"""Data parallelism by samples (DDP) and sharded states (ZeRO-1/2/3, FSDP2)."""

from __future__ import annotations

from typing import Optional

from autopar.spec.enums import DataPartition
from autopar.spec.strategy import Strategy
from autopar.techniques.base import RuleInput


def check_batch_split(s: Strategy, r: RuleInput) -> Optional[str]:
    """dp must divide the global batch (Hogwild and feature partitions split it their own way)."""
    if s.is_async and s.threads > 1 or s.data_partition is DataPartition.FEATURES:
        return None
    if r.global_batch % s.dp:
        return f"global_batch({r.global_batch}) % dp({s.dp}) = {r.global_batch % s.dp}; dp must divide the global batch"
    return None


def check_hsdp(s: Strategy, r: RuleInput) -> Optional[str]:
    """HSDP (FSDP2 on a 2-D (replicate, shard) mesh): ZeRO-2/3 inside groups of dp_shard
    ranks, each group a replica of the others."""
    if s.dp_shard is None:
        return None
    if s.zero < 2:
        return f"dp_shard({s.dp_shard}) shards with FSDP2 (HSDP), which is ZeRO-2 or 3; zero({s.zero}): use zero=2 or zero=3"
    if s.dp % s.dp_shard:
        return f"dp({s.dp}) % dp_shard({s.dp_shard}) = {s.dp % s.dp_shard}; dp_shard must divide dp"
    if s.is_async or s.subnet or s.data_partition is DataPartition.FEATURES:
        return "dp_shard needs synchronous sample-parallel replicas (sync=sync, subnet=false, data_partition=samples)"
    return None
