"""Data parallelism's cost terms: model-state memory (ZeRO), gradient synchronisation, the
optimizer step.

Model states follow ZeRO (Rajbhandari et al. 2020, Sec. 3.1 and 5): mixed-precision
Adam keeps 2 Psi (16-bit params) + 2 Psi (16-bit grads) + K Psi (fp32 master, m, v:
K = 12). Stage 1 shards the K Psi over the data-parallel group, stage 2 also the
gradients, stage 3 also the parameters:
  baseline (2 + 2 + K) Psi;  P_os 4 Psi + K Psi / N_d;  P_os+g 2 Psi + (2 + K) Psi / N_d;
  P_os+g+p (2 + 2 + K) Psi / N_d.

Synchronisation. DDP all-reduces gradients in buckets while backward runs (Li et al.
2020): the exposed part is what does not fit under the last micro-batch's backward, and
never less than one bucket. ZeRO-1/2 reduce-scatter gradients the same way and
all-gather the updated parameters after the step. ZeRO-3 / FSDP all-gathers each
layer's parameters before its forward and again before its backward (and again for
recomputation), and reduce-scatters gradients, per micro-batch, prefetching so that the
forward's gathers overlap the forward and the rest the backward; the first gather and the
last reduce-scatter cannot hide. A sharded stage moves at least DDP's bytes through the
same group, so the cost model never lets it expose less than DDP (cost/model.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from autopar.cost.collectives import Placement, all_gather_s, all_reduce_s, reduce_scatter_s
from autopar.cost.efficiency import Efficiency
from autopar.spec.cluster import Cluster
from autopar.spec.enums import Optimizer, Precision

DDP_BUCKET_BYTES = 25e6  # torch DDP bucket_cap_mb default


@dataclass(frozen=True)
class StateBytes:
    params: float
    grads: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer


def bytes_per_param(optimizer: Optimizer, precision: Precision) -> tuple[int, int, int]:
    """(parameter, gradient, optimizer-state) bytes per parameter, unsharded.

    Mixed precision keeps an fp32 master copy in the optimizer state (ZeRO's K
    includes it): Adam K = 4 + 4 + 4 = 12, momentum K = 8, SGD K = 4.
    """
    states = 4 * optimizer.state_floats_per_param
    if precision.is_mixed:
        return 2, 2, 4 + states
    return 4, 4, states


def model_state_bytes(params: float, per_param: tuple[int, int, int], zero: int, dp: int, accumulating: bool = False) -> StateBytes:
    """ZeRO Sec. 5: each state divides by N_d from its stage on (1: optimizer, 2: + grads, 3: + params).
    ZeRO-2 `accumulating` over several micro-batches keeps whole gradients between syncs, as
    the runtime runs it (FSDP2 set_requires_gradient_sync(False) until the last micro-batch,
    techniques/microbatch/apply.py); ZeRO-3 reduce-scatters every micro-batch, so stays sharded."""
    p, g, k = per_param
    grads_split = zero >= 3 or (zero == 2 and not accumulating)
    return StateBytes(params * p / (dp if zero >= 3 else 1), params * g / (dp if grads_split else 1), params * k / (dp if zero >= 1 else 1))


@dataclass(frozen=True)
class SyncCost:
    total_s: float  # communication time if nothing overlapped
    exposed_s: float  # what the step waits for


def ddp_sync(grad_bytes: float, group: Placement, overlap_s: float, cluster: Cluster, eff: Efficiency,
             last_bucket_waits: bool = True) -> SyncCost:
    """`last_bucket_waits=False` drops the one-bucket minimum (concave in the bytes), leaving
    a convex function of (bytes, window): what plan/bounds.py evaluates at the average rank."""
    total = all_reduce_s(grad_bytes, group, cluster, eff)
    last_bucket = all_reduce_s(min(grad_bytes, DDP_BUCKET_BYTES), group, cluster, eff) if last_bucket_waits else 0.0
    return SyncCost(total, max(total - overlap_s, last_bucket) if total else 0.0)


def zero12_sync(grad_bytes: float, param_bytes: float, group: Placement, overlap_s: float, cluster: Cluster, eff: Efficiency,
                last_bucket_waits: bool = True) -> SyncCost:
    """Reduce-scatter gradients under backward; all-gather updated 16-bit params after the step."""
    rs = reduce_scatter_s(grad_bytes, group, cluster, eff)
    last_bucket = reduce_scatter_s(min(grad_bytes, DDP_BUCKET_BYTES), group, cluster, eff) if last_bucket_waits else 0.0
    ag = all_gather_s(param_bytes, group, cluster, eff)
    return SyncCost(rs + ag, (max(rs - overlap_s, last_bucket) if rs else 0.0) + ag)


def zero3_sync_s(param_bytes: float, grad_bytes: float, gathers: int, m: int, forward_busy_s: float, backward_busy_s: float,
                 layer_fraction: float, group: Placement, cluster: Cluster, eff: Efficiency, factor: float) -> float:
    """Exposed ZeRO-3 seconds of one step. Per micro-batch, the forward's all-gather of the
    parameters hides under the forward (`forward_busy_s`, all m micro-batches), the
    backward's (gathers - 1) all-gathers and the gradients' reduce-scatter under the
    backward and recomputation (`backward_busy_s`); the first layer's gather and the last
    layer's reduce-scatter cannot hide."""
    ag = all_gather_s(param_bytes, group, cluster, eff) * factor
    rs = reduce_scatter_s(grad_bytes, group, cluster, eff) * factor
    forward = max(0.0, m * ag - forward_busy_s)
    backward = max(0.0, m * ((gathers - 1) * ag + rs) - backward_busy_s)
    ends = (all_gather_s(param_bytes * layer_fraction, group, cluster, eff)
            + reduce_scatter_s(grad_bytes * layer_fraction, group, cluster, eff))
    return forward + backward + ends


def optimizer_step_s(params: float, per_param: tuple[int, int, int], zero: int, dp: int, mixed: bool, bandwidth_Bps: float) -> float:
    """The optimizer step streams each shard's bytes once: parameter read + write (mixed:
    the fp32 master inside the states instead), gradient read, states read + write."""
    p, g, k = per_param
    shard = params / (dp if zero >= 1 else 1)
    traffic = p + g + 2 * k if mixed else 2 * p + g + 2 * k
    return shard * traffic / bandwidth_Bps
