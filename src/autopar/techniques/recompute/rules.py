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
        return f"recompute=full checkpoints each block of a stack; model {r.facts.name} has none ({r.facts.pipeline_problem})"
    if s.recompute is not Recompute.NONE and r.facts.batch_norms:
        return (f"recompute={s.recompute.value} re-runs the forward in backward, and model {r.facts.name}'s "
                f"{r.facts.batch_norms} BatchNorm layers would update their running statistics twice per step")
    return None
