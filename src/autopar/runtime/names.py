"""Parameter names as the unwrapped model spells them.

Wrappers insert prefixes: DDP `module.`, checkpoint_wrapper `_checkpoint_wrapped_module.`.
Checkpoints, gatherers and materialization key parameters by the model's own names.
"""

from __future__ import annotations

from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import _CHECKPOINT_PREFIX

_DDP_PREFIX = "module."


def clean_name(name: str) -> str:
    """A parameter name as the unwrapped model spells it."""
    return name.removeprefix(_DDP_PREFIX).replace(_CHECKPOINT_PREFIX, "")
