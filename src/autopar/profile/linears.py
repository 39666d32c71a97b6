"""The modules tensor parallelism splits by features: nn.Linear and transformers' Conv1D."""

from __future__ import annotations

from typing import Optional

from torch import nn


def features(m: nn.Module) -> Optional[tuple[int, int]]:
    """(input, output) features of a Linear, or of a transformers Conv1D (GPT-2: y = x W + b,
    W (in, out)); None for anything else."""
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    if is_conv1d(m):
        return tuple(m.weight.shape)
    return None


def is_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and getattr(m, "weight", None) is not None and m.weight.dim() == 2
