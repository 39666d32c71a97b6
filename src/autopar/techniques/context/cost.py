"""Context parallelism's cost terms (one layer, one micro-batch of b samples on one rank).

Each rank computes 1/cp of every sample's tokens: the layer's per-sample costs at b / cp
samples (GEMM rows, elementwise bytes, saved activations; with zigzag chunks the causal
attention work is balanced too). Attention all-gathers the keys and values of the whole
sequence before the core (forward) and reduce-scatters their gradients (backward): two
collectives of the sample's K and V bytes (LayerStats.kv_bytes x b), not overlapped
(Llama 3, Dubey et al. 2024, Sec. 3.3.2: all-gather based CP, exposed but small next to
attention at long sequences).
"""

from __future__ import annotations

from typing import Callable

Gather = Callable[[float], float]  # bytes of the gathered (whole-sequence) tensor -> seconds


def kv_exchange_s(kv_bytes: float, all_gather: Gather) -> float:
    """Forward all-gather of K and V + backward reduce-scatter of their gradients (same volume)."""
    return 2 * all_gather(kv_bytes) if kv_bytes > 0 else 0.0
