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
    # FITTED. Fraction of peak a large, well-shaped GEMM sustains (cuBLAS on A100
    # reaches 0.7-0.85 of 312 TFLOP/s on 4k-12k GEMMs; Megatron-LM Fig. 12 / nccl-free runs).
    gemm_max: float = 0.78
    # FITTED. Dimension (rows, columns or inner size) at which a GEMM runs at half of
    # gemm_max: tiles go unfilled and waves quantise when a dimension is small
    # (tensor parallelism shrinks n or k; Megatron-LM Sec. 5.4 measures this falloff).
    gemm_half_dim: float = 96.0
    # Fraction of peak memory bandwidth streaming kernels reach (STREAM-like, ~0.8-0.9 on HBM).
    memory_bandwidth: float = 0.85
    # FITTED. Fraction of eager elementwise traffic left after kernel fusion on accelerators
    # (fused softmax/bias-dropout-add in Megatron-LM, torch.compile, FlashAttention).
    # Devices with shared_memory (CPUs running eager PyTorch) use 1.0.
    accelerator_fusion: float = 0.4
    # FITTED. Fraction of link bandwidth collectives reach (NCCL bus bandwidth over the
    # link rate: ~0.75-0.85 on NVSwitch and HDR InfiniBand).
    collective_intra: float = 0.80
    collective_inter: float = 0.80
    # Point-to-point transfers reach closer to the link rate than collectives.
    p2p: float = 0.85
    # Optimizer step: bytes read and written per parameter by a fused Adam in mixed
    # precision (fp32 master, m, v read+write; 16-bit grad read; 16-bit param write).
    adam_bytes_per_param_mixed: float = 30.0


DEFAULT = Efficiency()
