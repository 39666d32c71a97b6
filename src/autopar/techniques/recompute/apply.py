"""Activation checkpointing (recomputation) with PyTorch's checkpoint_wrapper (non-reentrant).

  none       keep every activation
  selective  checkpoint each attention core (QK^T, softmax, dropout, times V): the
             activations that grow with T^2 are recomputed (Korthikanti et al. 2022)
  full       checkpoint each block of the model's stack (ModelFacts.blocks, any depth):
             keep its input, recompute it in backward

Wrapping inserts `_checkpoint_wrapped_module` into parameter names (runtime/names.py
removes it).
"""

from __future__ import annotations

from typing import Optional, Sequence

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

from autopar.models.attention import CoreAttention
from autopar.profile.structure import stack_blocks
from autopar.runtime.parallelized import Parallelized
from autopar.spec.enums import Recompute


def apply(par: Parallelized) -> None:
    mode = par.strategy.recompute
    wrapped = sum(apply_activation_checkpointing(c.module, mode, par.facts.blocks) for c in par.chunks)
    par.applied.append(f"recompute({mode.value}, {wrapped} modules)")


def apply_activation_checkpointing(module: nn.Module, mode: Recompute, blocks: Optional[Sequence[str]] = None) -> int:
    """Wrap in place; returns how many submodules were wrapped. `blocks`: the block names
    (default: those of the stacks profile/structure.py finds); a pipeline chunk holds some."""
    if mode is Recompute.NONE:
        return 0
    if mode is Recompute.FULL:
        names = stack_blocks(module) if blocks is None else blocks
        targets = [_parent_and_name(module, n) for n in names if _holds(module, n)]
    else:
        targets = [(parent, name) for parent in module.modules() for name, child in parent.named_children() if isinstance(child, CoreAttention)]
    for parent, name in targets:
        parent.register_module(name, checkpoint_wrapper(parent.get_submodule(name), checkpoint_impl=CheckpointImpl.NO_REENTRANT))
    return len(targets)


def _holds(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
    except AttributeError:
        return False
    return True


def _parent_and_name(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent, _, child = name.rpartition(".")
    return (module.get_submodule(parent) if parent else module), child
