"""Expert parallelism's cost terms (per MoE layer, one micro-batch of b samples on one rank).

Dispatch: each rank sends its (token, choice) rows, D = b x tokens x top_k x h x bytes
(LayerStats.dispatch_bytes x b), to the ranks holding their experts and receives the
outputs back: one all-to-all each way in forward, and their two transposes in backward
(GShard, Lepikhin et al. 2021, Sec. 3.2; torchtitan's ExpertParallel). With routing
uniform over the experts a fraction (ep - 1) / ep of the rows leaves the rank.

Load imbalance: without expert parallelism a rank computes all of its own rows, so its
load is its batch whatever the routing; with it, a rank computes the rows its experts
received, and the busiest rank sets the pace. The expert compute is scaled by the ratio
of the busiest rank's rows to the mean (Efficiency.expert_imbalance).
"""

from __future__ import annotations

from typing import Callable

A2A_PER_LAYER = 4  # dispatch + combine in forward, their transposes in backward

AllToAll = Callable[[float], float]  # bytes each rank holds for the exchange -> seconds


def dispatch_s(dispatch_bytes: float, all_to_all: AllToAll) -> float:
    """All-to-all time of one MoE layer for one micro-batch, forward and backward."""
    return A2A_PER_LAYER * all_to_all(dispatch_bytes) if dispatch_bytes > 0 else 0.0


def imbalance_s(expert_flops: float, forward_flops: float, compute_s: float, imbalance: float) -> float:
    """Extra compute of the busiest rank: (imbalance - 1) x the experts' share of the layer's
    forward + backward time (the experts' backward scales with their forward)."""
    if forward_flops <= 0 or expert_flops <= 0:
        return 0.0
    return (imbalance - 1.0) * expert_flops / forward_flops * compute_s
