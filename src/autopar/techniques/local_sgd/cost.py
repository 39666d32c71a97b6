"""Local SGD's cost terms: parameter averaging every H steps, and the steps it costs.

Parameters are all-reduced every H steps instead of gradients every step: per step,
1/H of an all-reduce of the parameters, not overlapped. Statistical efficiency
(Stich 2019; Lin et al. 2020; Ortiz et al. 2021): the replicas drift for H - 1 steps
and at fixed steps the loss lags, growing with H. ASSUMED (the validation file has no
such runs; `autopar validate` measures real ones on small tasks): 1 + 0.04 (H - 1).
"""

from __future__ import annotations

from autopar.cost.collectives import Placement, all_reduce_s
from autopar.cost.efficiency import Efficiency
from autopar.spec.cluster import Cluster

COST_PER_STEP_OF_DRIFT = 0.04  # ASSUMED


def averaging_s(param_bytes: float, group: Placement, period: int, cluster: Cluster, eff: Efficiency) -> float:
    """Seconds per step of averaging `param_bytes` over `group` every `period` steps."""
    return all_reduce_s(param_bytes, group, cluster, eff) / period


def steps_factor(period: int) -> float:
    """Steps to the same loss, relative to synchronous training."""
    return 1 + COST_PER_STEP_OF_DRIFT * (period - 1) if period > 1 else 1.0
