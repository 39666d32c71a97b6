"""Tensor and sequence parallelism: the model must name (or the profiler find) what to split."""

from __future__ import annotations

from typing import Optional

from autopar.spec.strategy import Strategy
from autopar.techniques.base import RuleInput


def check_tensor_parallel(s: Strategy, r: RuleInput) -> Optional[str]:
    if s.tp == 1:
        return None
    facts = r.facts
    if not facts.has_tp_plan:
        return f"tp({s.tp}): model {facts.name} has no tensor-parallel plan (tp_plan)"
    if not facts.tp_units:
        return f"tp({s.tp}): the tp_plan of model {facts.name} splits no module; use tp=1"
    for what, size in facts.tp_units:
        if size % s.tp:
            return f"tp({s.tp}) must divide {what}({size}): {size} % {s.tp} = {size % s.tp}"
    return None


def check_sequence_parallel(s: Strategy, r: RuleInput) -> Optional[str]:
    if not s.sequence_parallel:
        return None
    if s.tp == 1:
        return "sequence_parallel needs tp > 1"
    seq = r.facts.seq_len
    if seq is None:
        return f"sequence_parallel needs a transformer (gpt, llama); {r.facts.name} has no sequence dimension"
    if seq % s.tp:
        return f"sequence_parallel: tp({s.tp}) must divide seq_len({seq}): {seq} % {s.tp} = {seq % s.tp}"
    return None
