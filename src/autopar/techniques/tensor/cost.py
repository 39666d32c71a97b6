"""Tensor parallelism's cost terms (Megatron-LM, Shoeybi et al. 2019; Korthikanti et al. 2022).

Compute divides by t inside the roofline (autopar.cost.compute: each GEMM's split
dimension). What tensor parallelism adds per layer and micro-batch is its collectives:
2 all-reduces forward and 2 backward per transformer block (Megatron Sec. 3), each of
b s h bytes; with sequence parallelism a reduce-scatter + all-gather pair of the same
volume replaces each all-reduce. DTensor adds a host cost per split module
(`tp_module_overhead_s`, measured by `autopar calibrate`), ~1/3 in forward, 2/3 in backward.
"""

from __future__ import annotations

from typing import Callable

from autopar.profile.types import LayerStats

CommFn = Callable[[float], float]  # bytes -> seconds of one collective of the TP group


def tp_comm_s(stats: LayerStats, b: int, tp: int, all_reduce: CommFn, module_overhead_s: float = 0.0) -> tuple[float, float]:
    """(forward, backward) seconds of one micro-batch of b samples' tensor-parallel collectives."""
    if tp <= 1:
        return 0.0, 0.0
    n_f, n_b = stats.tp_fwd_allreduces, stats.tp_bwd_allreduces
    fwd = n_f * all_reduce(stats.tp_fwd_allreduce_bytes * b / n_f) if n_f else 0.0
    bwd = n_b * all_reduce(stats.tp_bwd_allreduce_bytes * b / n_b) if n_b else 0.0
    host = len(stats.tp_styles) * module_overhead_s / 3
    return fwd + host, bwd + 2 * host


def params_per_rank(stats: LayerStats, tp: int) -> float:
    """Parameters one tensor-parallel rank holds of this layer: the split ones / t, the rest whole."""
    return stats.tp_params / tp + (stats.params - stats.tp_params)
