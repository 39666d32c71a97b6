"""Shared-memory workers: intra-op threads, or Hogwild processes on one memory."""

from __future__ import annotations

from typing import Optional

from autopar.spec.strategy import Strategy
from autopar.techniques.base import RuleInput


def check_hogwild_batch(s: Strategy, r: RuleInput) -> Optional[str]:
    """Hogwild: the workers split each batch between them, no micro-batches."""
    if not (s.is_async and s.threads > 1):
        return None
    workers = s.dp * s.threads
    if r.global_batch % workers:
        return f"global_batch({r.global_batch}) % Hogwild workers dp({s.dp}) * threads({s.threads}) = {r.global_batch % workers}"
    return None


def check_priced_threads(s: Strategy, r: RuleInput) -> Optional[str]:
    if s.threads > 1 and (s.tp > 1 or s.pp > 1):
        return f"threads({s.threads}) with tp({s.tp}), pp({s.pp}): the cost model prices shared-memory workers only beside dp"
    return None
