"""Gradient accumulation: a step's batch in equal micro-batches, gradients synchronised on the
last only (DDP's no_sync, FSDP2's set_requires_gradient_sync). Each micro-batch's loss is
divided by their count, so gradients equal the whole batch's. Under a pipeline the
schedule itself runs the micro-batches (techniques/pipeline/apply.py)."""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn

from autopar.runtime.parallelized import GradSync


def micro(inputs: tuple[torch.Tensor, ...], i: int, n: int) -> tuple[torch.Tensor, ...]:
    """Micro-batch i of n of every input (along the batch dimension)."""
    return tuple(x.chunk(n)[i] for x in inputs) if n > 1 else inputs


def micro_target(target: Optional[torch.Tensor], i: int, n: int) -> Optional[torch.Tensor]:
    return target if target is None or n == 1 else target.chunk(n)[i]


def sync_unless(last: bool, n: int, grad_sync: GradSync, model: nn.Module, every: bool = False) -> contextlib.AbstractContextManager:
    """Skip the data-parallel gradient sync on every micro-batch but the last; `every`
    (ZeRO-3, offload) reduce-scatters each micro-batch's gradients into the shards, so no
    unsharded gradient accumulates on the device (what cost/model.py prices for ZeRO-3)."""
    if n == 1 or every:
        return contextlib.nullcontext()
    if grad_sync is GradSync.DDP and not last:
        return model.no_sync()
    if grad_sync is GradSync.FSDP:
        model.set_requires_gradient_sync(last)
    return contextlib.nullcontext()
