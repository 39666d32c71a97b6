"""Roofline time of a layer's operators on one device (Williams et al. 2009).

Each matrix product costs max(FLOPs / (peak * efficiency(shape)), bytes / bandwidth);
efficiency falls as a dimension shrinks (tensor parallelism divides n or k, small
micro-batches shrink m). A product that is memory-bound even at full efficiency
(low arithmetic intensity: GEMV-like, skinny) runs at memory bandwidth. Non-matmul operators are memory-bound: bytes / bandwidth.
Every operator launch adds a fixed overhead (eager dispatch; matters on CPUs and for
tiny layers).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from autopar.cost.efficiency import Efficiency
from autopar.profile.types import Gemm, LayerStats


@dataclass(frozen=True)
class DeviceRate:
    """What one worker (a device, or `threads` cores sharing memory) delivers."""

    flops: float  # peak FLOP/s in the compute precision
    bandwidth_Bps: float  # memory bandwidth available to this worker
    op_overhead_s: float
    fusion: float  # fraction of eager elementwise traffic actually moved
    dtype_bytes: int


def gemm_efficiency(m: float, n: float, k: float, eff: Efficiency) -> float:
    """Fraction of peak: gemm_max, halved when the smallest dimension is gemm_half_dim."""
    d = min(m, n, k)
    return eff.gemm_max * d / (d + eff.gemm_half_dim)


def gemm_s(g: Gemm, b: int, tp: int, rate: DeviceRate, eff: Efficiency, ep: int = 1) -> float:
    """Forward time of one profiled product at micro-batch b and tensor-parallel degree tp. A
    routed expert's product under expert parallelism: the rank runs 1 / ep of the experts,
    each on the rows of ep ranks (same FLOPs, ep-fold taller GEMMs)."""
    if g.expert and ep > 1:
        return gemm_s(replace(g, m=g.m * ep, expert=False), b, tp, rate, eff) / ep
    m, n, k, count = (g.m * b, g.n, g.k, g.count) if g.rows_scale_with_batch else (g.m, g.n, g.k, g.count * b)
    if g.tp_split == "n":
        n = n / tp
    elif g.tp_split == "k":
        k = k / tp
    elif g.tp_split == "count":
        count = count / tp
    flops = 2.0 * m * n * k * count
    memory = count * (m * k + k * n + m * n) * rate.dtype_bytes / (rate.bandwidth_Bps * eff.memory_bandwidth)
    if memory >= flops / (rate.flops * eff.gemm_max):
        return memory  # memory-bound even at full efficiency: skinny (GEMV-like) kernels stream at bandwidth
    return max(memory, flops / (rate.flops * gemm_efficiency(m, n, k, eff)))


def memory_bound_s(nbytes: float, rate: DeviceRate, eff: Efficiency) -> float:
    return nbytes * rate.fusion / (rate.bandwidth_Bps * eff.memory_bandwidth)


def split_bytes(total: float, tp_part: float, tp: int, sequence_parallel: bool) -> float:
    """Bytes left on one rank: the tensor-parallel part divides by tp; the replicated
    part (norms, dropout, residuals) divides too under sequence parallelism."""
    replicated = total - tp_part
    return tp_part / tp + (replicated / tp if sequence_parallel else replicated)


@dataclass(frozen=True)
class LayerCompute:
    """One micro-batch through one layer on one rank, without communication."""

    forward_s: float
    backward_s: float
    core_forward_s: float  # the attention core alone (redone by selective recompute)


def layer_compute(stats: LayerStats, b: int, tp: int, sp: bool, rate: DeviceRate, eff: Efficiency, ep: int = 1) -> LayerCompute:
    gemm_fwd = sum(gemm_s(g, b, tp, rate, eff, ep) for g in stats.gemms)
    other_flops = max(0.0, stats.forward_flops - sum(g.flops_per_sample() for g in stats.gemms)) * b / tp
    gemm_fwd += other_flops / (rate.flops * eff.gemm_max)
    bwd_ratio = stats.backward_flops / stats.forward_flops if stats.forward_flops else 0.0
    tp_share = stats.memory_bound_tp_bytes / stats.memory_bound_bytes if stats.memory_bound_bytes else 0.0
    mem_fwd = memory_bound_s(split_bytes(stats.memory_bound_bytes, stats.memory_bound_tp_bytes, tp, sp) * b, rate, eff)
    bwd_bytes = stats.backward_memory_bound_bytes
    mem_bwd = memory_bound_s(split_bytes(bwd_bytes, bwd_bytes * tp_share, tp, sp) * b, rate, eff)
    core_gemm = gemm_fwd * (stats.core_flops / stats.forward_flops) if stats.forward_flops else 0.0
    core = core_gemm + memory_bound_s(stats.core_memory_bound_bytes / tp * b, rate, eff)
    overhead_f = stats.forward_ops * rate.op_overhead_s
    overhead_b = stats.backward_ops * rate.op_overhead_s
    return LayerCompute(
        forward_s=gemm_fwd + mem_fwd + overhead_f,
        backward_s=gemm_fwd * bwd_ratio + mem_bwd + overhead_b,
        core_forward_s=core,
    )
