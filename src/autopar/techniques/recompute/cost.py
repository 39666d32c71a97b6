"""Recomputation's cost terms: activation memory kept, and the forward work redone.

Activations per layer come from the profile (which reproduces Korthikanti et al. 2022
Eqs. 1-6 for transformers): tensor-parallel regions divide by t, the rest too under
sequence parallelism; selective recompute drops the attention core (Eq. 5: its
5 a s^2 b); full recompute keeps only each layer's input (Eq. 6: 2 s b h).
"""

from __future__ import annotations

from autopar.profile.types import LayerStats
from autopar.spec.enums import Recompute


def layer_activation_bytes(stats: LayerStats, b: int, tp: int, sp: bool, recompute: Recompute) -> float:
    """Bytes one micro-batch leaves saved in this layer until its backward."""
    if recompute is Recompute.FULL:
        return stats.input_bytes * b / (tp if sp else 1)  # Eq. 6: 2sbh (/t with SP)
    replicated = stats.saved_bytes - stats.saved_tp_bytes
    kept = stats.saved_tp_bytes / tp + (replicated / tp if sp else replicated)  # Eqs. 2 and 4
    if recompute is Recompute.SELECTIVE and stats.has_core:
        kept -= stats.saved_core_bytes / tp  # Eq. 5: the 5as^2b of the core are recomputed
    return kept * b


def layer_working_bytes(stats: LayerStats, b: int, tp: int, sp: bool, recompute: Recompute) -> float:
    """Extra memory while one layer's backward runs under full recompute: its full activations."""
    if recompute is not Recompute.FULL:
        return 0.0
    return layer_activation_bytes(stats, b, tp, sp, Recompute.NONE)


def recompute_s(recompute: Recompute, stats: LayerStats, forward_s: float, tp_forward_s: float, core_forward_s: float) -> float:
    """Seconds redone in backward: the whole forward (its all-reduces included) under full,
    the attention core under selective."""
    if recompute is Recompute.FULL:
        return forward_s + tp_forward_s
    if recompute is Recompute.SELECTIVE and stats.has_core:
        return core_forward_s
    return 0.0
