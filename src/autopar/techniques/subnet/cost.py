"""Independent subnetwork training's cost terms (Yuan et al. 2022).

Each of n workers trains 1/n of every MLP layer's hidden units (the layer's FLOPs and
parameters / n) on its 1/n of the batch, with no gradient sync; every H steps the
subnetworks are reassembled (1/H of an all-reduce of the partitioned weights per step).
Statistical efficiency ASSUMED (equal work): n times the steps, so it wins only where it
saves communication or memory; the paper reports better than this in its regime
(2-8 workers, slow networks).
"""

from __future__ import annotations

from typing import Sequence

from autopar.cost.compute import DeviceRate
from autopar.cost.efficiency import Efficiency
from autopar.cost.layers import LayerCosts, layer_costs
from autopar.profile.types import LayerStats, is_mlp_layer
from autopar.spec.enums import Recompute

STEPS_PER_WORKER = 1.0  # ASSUMED


def flops_per_sample(stats: Sequence[LayerStats], workers: int) -> float:
    """Forward + backward FLOPs per sample one worker executes: 1/n of its MLP layers."""
    total = sum(x.forward_flops + x.backward_flops for x in stats)
    mlp = sum(x.forward_flops + x.backward_flops for x in stats if is_mlp_layer(x))
    return total - mlp + mlp / workers


def partitioned_params(stats: Sequence[LayerStats]) -> float:
    """Parameters of the MLP layers, the ones reassembled every H steps."""
    return sum(x.params for x in stats if is_mlp_layer(x))


def steps_factor(workers: int) -> float:
    return STEPS_PER_WORKER * workers if workers > 1 else 1.0


def subnet_layer_costs(stats: LayerStats, b: int, workers: int, recompute: Recompute, rate: DeviceRate, eff: Efficiency) -> LayerCosts:
    """An MLP layer on one subnetwork worker: its hidden units / n, as a tensor split by n
    without the all-reduces (each worker trains its part alone)."""
    return layer_costs(stats, b, workers, False, recompute, rate, eff, lambda n: 0.0)
