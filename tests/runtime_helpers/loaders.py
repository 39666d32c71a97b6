"""User data loaders for the runtime tests (the `data.loader` signature: load(indices) -> (inputs, target))."""

from __future__ import annotations

from functools import lru_cache

import torch

SAMPLES, FEATURES, CLASSES = 1024, 16, 4


@lru_cache(maxsize=1)
def _teacher_dataset() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(SAMPLES, FEATURES, generator=gen)
    teacher = torch.randn(FEATURES, CLASSES, generator=gen)
    return x, (x @ teacher).argmax(dim=1)


def teacher_classes(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable task: the class a fixed random linear teacher assigns to each sample."""
    x, y = _teacher_dataset()
    return x[indices], y[indices]
