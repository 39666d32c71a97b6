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
