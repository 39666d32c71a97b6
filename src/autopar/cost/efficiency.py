"""Efficiency constants of the cost model.

First-principles quantities (FLOPs, bytes, link speeds) come from the profile and
the hardware presets. The numbers here say how much of a peak real software
reaches. Those marked FITTED were chosen once, on the public validation file
(shared/validation/published_runs.json, by benchmarks/published_runs.py), and
apply to every prediction alike; none is specific to a run.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Efficiency:
    # FITTED (benchmarks/fit_efficiency.py). Fraction of peak a large, well-shaped GEMM
    # sustains end to end (cuBLAS on A100 reaches 0.7-0.85 of 312 TFLOP/s on 4k-12k GEMMs).
    gemm_max: float = 0.70
    # FITTED. Dimension (rows, columns or inner size) at which a GEMM runs at half of
    # gemm_max: tiles go unfilled and waves quantise when a dimension is small
    # (tensor parallelism shrinks n or k; Megatron-LM Sec. 5.4 measures this falloff).
    gemm_half_dim: float = 32.0
    # Fraction of peak memory bandwidth streaming kernels reach (STREAM-like, ~0.8-0.9 on HBM).
    memory_bandwidth: float = 0.85
    # FITTED. Fraction of eager elementwise traffic left after kernel fusion on accelerators
    # (fused softmax/bias-dropout-add in Megatron-LM, torch.compile, FlashAttention).
    # Devices with shared_memory (CPUs running eager PyTorch) use 1.0.
    accelerator_fusion: float = 0.4
    # FITTED. Fraction of link bandwidth collectives reach (NCCL bus bandwidth over the
    # link rate: ~0.75-0.85 on NVSwitch and HDR InfiniBand).
    collective_intra: float = 0.90
    collective_inter: float = 0.90
    # FITTED. Fraction of compute time under which data-parallel communication hides
    # (DDP buckets, ZeRO-3 prefetching): kernels and transfers contend for memory and SMs.
    comm_overlap: float = 0.7
    # FITTED. Point-to-point pipeline sends (small, latency-bound messages in 2021 Megatron).
    p2p: float = 0.60
    # ASSUMED (not fitted: no MoE run in validation/ yet). Busiest expert-parallel rank's
    # rows over the mean: the capacity factor token-choice routers are trained to stay
    # under (Switch Transformer, Fedus et al. 2022, Sec. 2.2: 1.0-1.25; GShard: 1.25 budget
    # with an auxiliary balance loss).
    expert_imbalance: float = 1.25


DEFAULT = Efficiency()
