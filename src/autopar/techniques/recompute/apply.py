"""Activation checkpointing (recomputation) with PyTorch's checkpoint_wrapper (non-reentrant).

  none       keep every activation
  selective  checkpoint each attention core (QK^T, softmax, dropout, times V): the
             activations that grow with T^2 are recomputed (Korthikanti et al. 2022)
  full       checkpoint each block of `layers`: keep its input, recompute it in backward

Wrapping inserts `_checkpoint_wrapped_module` into parameter names (runtime/names.py
removes it).
"""

from __future__ import annotations

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

from autopar.models.attention import CoreAttention
from autopar.runtime.parallelized import Parallelized
from autopar.spec.enums import Recompute


def apply(par: Parallelized) -> None:
    mode = par.strategy.recompute
    wrapped = sum(apply_activation_checkpointing(c.module, mode) for c in par.chunks)
    par.applied.append(f"recompute({mode.value}, {wrapped} modules)")


def apply_activation_checkpointing(module: nn.Module, mode: Recompute) -> int:
    """Wrap in place; returns how many submodules were wrapped."""
    if mode is Recompute.NONE:
        return 0
    if mode is Recompute.FULL:
        targets = [(module.layers, name) for name, _ in module.layers.named_children()]
    else:
        targets = [(parent, name) for parent in module.modules() for name, child in parent.named_children() if isinstance(child, CoreAttention)]
    for parent, name in targets:
        parent.register_module(name, checkpoint_wrapper(parent.get_submodule(name), checkpoint_impl=CheckpointImpl.NO_REENTRANT))
    return len(targets)
