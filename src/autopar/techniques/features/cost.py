"""Feature partitioning's cost terms: the input Linear with its columns split over dp.

Compute and weights / dp; one all-reduce of the partial pre-activations forward; the
backward of a sum is the identity (no input gradient communication); each rank keeps
only its columns of the saved input.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from autopar.cost.compute import DeviceRate
from autopar.cost.efficiency import Efficiency
from autopar.cost.layers import LayerCosts, layer_costs
from autopar.profile.types import LayerStats
from autopar.spec.enums import Recompute


def feature_layer_costs(stats: LayerStats, b: int, dp: int, recompute: Recompute, rate: DeviceRate, eff: Efficiency,
                        all_reduce: Callable[[float], float]) -> LayerCosts:
    c = layer_costs(stats, b, dp, False, recompute, rate, eff, lambda n: 0.0, split_params=False)
    replicated_input = stats.input_bytes * b * (1 - 1 / dp)  # the Linear saves x: each rank keeps its columns
    return replace(c, params=stats.params / dp, tp_forward_s=all_reduce(stats.output_bytes * b),
                   activation_bytes=max(0.0, c.activation_bytes - replicated_input))
