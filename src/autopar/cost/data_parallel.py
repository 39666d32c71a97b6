"""Data-parallel synchronisation: all-reduce (DDP), ZeRO-1/2/3, local SGD.

DDP all-reduces gradients in buckets while backward runs (Li et al. 2020, PyTorch
DDP): the exposed part is what does not fit under the last micro-batch's backward,
and never less than one bucket. ZeRO-1/2 reduce-scatter gradients the same way and
all-gather the updated parameters after the step. ZeRO-3 / FSDP all-gathers each
layer's parameters before its forward and again before its backward (and again
for recomputation), and reduce-scatters gradients, per micro-batch, prefetching
so that communication overlaps compute; the step takes the longer of the two.
Local SGD all-reduces parameters every H steps instead of gradients every step.
"""

from __future__ import annotations

from dataclasses import dataclass

from autopar.cost.collectives import Placement, all_gather_s, all_reduce_s, reduce_scatter_s
from autopar.cost.efficiency import Efficiency
from autopar.spec.cluster import Cluster

DDP_BUCKET_BYTES = 25e6  # torch DDP bucket_cap_mb default


@dataclass(frozen=True)
class SyncCost:
    total_s: float  # communication time if nothing overlapped
    exposed_s: float  # what the step waits for


def ddp_sync(grad_bytes: float, group: Placement, overlap_s: float, cluster: Cluster, eff: Efficiency) -> SyncCost:
    total = all_reduce_s(grad_bytes, group, cluster, eff)
    last_bucket = all_reduce_s(min(grad_bytes, DDP_BUCKET_BYTES), group, cluster, eff)
    return SyncCost(total, max(total - overlap_s, last_bucket) if total else 0.0)


def zero12_sync(grad_bytes: float, param_bytes: float, group: Placement, overlap_s: float, cluster: Cluster, eff: Efficiency) -> SyncCost:
    """Reduce-scatter gradients under backward; all-gather updated 16-bit params after the step."""
    rs = reduce_scatter_s(grad_bytes, group, cluster, eff)
    last_bucket = reduce_scatter_s(min(grad_bytes, DDP_BUCKET_BYTES), group, cluster, eff)
    ag = all_gather_s(param_bytes, group, cluster, eff)
    return SyncCost(rs + ag, (max(rs - overlap_s, last_bucket) if rs else 0.0) + ag)


def zero3_traffic_s(param_bytes: float, grad_bytes: float, gathers_per_microbatch: int, m: int, group: Placement,
                    cluster: Cluster, eff: Efficiency) -> float:
    """All communication of ZeRO-3 in one step: per micro-batch, `gathers_per_microbatch`
    all-gathers of the stage's parameters and one reduce-scatter of its gradients."""
    ag = all_gather_s(param_bytes, group, cluster, eff)
    rs = reduce_scatter_s(grad_bytes, group, cluster, eff)
    return m * (gathers_per_microbatch * ag + rs)


def local_sgd_sync(param_bytes: float, group: Placement, period: int, cluster: Cluster, eff: Efficiency) -> SyncCost:
    """Parameters averaged every `period` steps; per step, 1/period of an all-reduce, not overlapped."""
    total = all_reduce_s(param_bytes, group, cluster, eff) / period
    return SyncCost(total, total)
