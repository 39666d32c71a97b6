"""Asynchronous updates: local SGD over dp replicas, or Hogwild over shared-memory threads."""

from __future__ import annotations

from typing import Optional

from autopar.spec.strategy import Strategy
from autopar.techniques.base import RuleInput


def check_async(s: Strategy, r: RuleInput) -> Optional[str]:
    if not s.is_async:
        if s.sync_every > 1 and not s.subnet:
            return f"sync_every({s.sync_every}) applies to sync=async or subnet=true"
        return None
    if s.pp > 1 or s.tp > 1:
        return f"sync=async trains full replicas; it needs pp(1) and tp(1), got pp({s.pp}), tp({s.tp})"
    if s.zero:
        return f"sync=async keeps full replicas; zero({s.zero}) shards them; use zero=0"
    if s.threads > 1 and s.dp > 1:
        return f"Hogwild (sync=async, threads({s.threads})) runs in one process group; it needs dp(1), got dp({s.dp})"
    if s.threads > 1 and s.microbatch is not None:
        return f"microbatch({s.microbatch}): each Hogwild worker takes global_batch / threads samples per step; leave microbatch out"
    if s.threads == 1 and s.dp == 1:
        return "sync=async needs dp > 1 (local SGD) or threads > 1 (Hogwild)"
    return None
