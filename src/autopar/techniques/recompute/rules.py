"""Activation recomputation: selective needs attention cores, full a stack of blocks."""

from __future__ import annotations

from typing import Optional

from autopar.spec.enums import Recompute
from autopar.spec.strategy import Strategy
from autopar.techniques.base import RuleInput


def check_recompute(s: Strategy, r: RuleInput) -> Optional[str]:
    if s.recompute is Recompute.SELECTIVE and r.facts.attention_cores == 0:
        return f"recompute=selective recomputes attention cores; model {r.facts.name} has none (use full)"
    if s.recompute is Recompute.FULL and r.facts.layers == 0:
        return f"recompute=full checkpoints each block of `layers`; model {r.facts.name} has none"
    return None
