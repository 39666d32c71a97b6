"""Micro-batching (gradient accumulation, and the unit a pipeline schedules)."""

from __future__ import annotations

from typing import Optional

from autopar.spec.enums import DataPartition
from autopar.spec.strategy import Strategy
from autopar.techniques.base import RuleInput


def check_microbatch(s: Strategy, r: RuleInput) -> Optional[str]:
    if s.microbatch is None or s.is_async and s.threads > 1:  # Hogwild: local_sgd's rules refuse a micro-batch
        return None
    if s.data_partition is DataPartition.FEATURES:  # every worker sees every sample
        per = f"global_batch({r.global_batch}) (data_partition=features)"
    else:
        per = f"global_batch({r.global_batch}) / dp({s.dp}) = {r.global_batch // s.dp}"
    local = s.local_batch(r.global_batch)
    if s.microbatch > local:
        return f"microbatch({s.microbatch}) > per-replica batch {per}"
    if local % s.microbatch:
        return f"{per} samples per replica, not a multiple of microbatch({s.microbatch})"
    return None
