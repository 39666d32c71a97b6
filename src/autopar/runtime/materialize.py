"""Meta-device initialisation: a rank allocates and draws only the parameters it holds.

The built-in families are built on the meta device and parallelized there (pipeline
split, tensor parallel, feature partition, FSDP2), so no rank ever holds the whole
model. `apply_materialization` then, per chunk:
  1. to_empty(device)   allocates this rank's local tensors (DTensor shards, FSDP2's
                        padded shards, this stage's layers), uninitialised;
  2. re-ties aliases    to_empty makes one new parameter per name (GPT's head.out.weight);
  3. fills each         with the box of its full tensor this rank holds (models/init.py:
                        values a pure function of (seed, name, shape), drawn one block at
                        a time), so every layout starts from single-process training's values;
  4. init_buffers       recomputes the constant buffers (causal masks, rotary tables).
Peak memory: the rank's shard plus one block of drawn values.

The box a local tensor holds in its full tensor: a DTensor's from its mesh and placements
(compute_local_shape_and_global_offset, which DCP uses too; it handles FSDP2 over tensor
parallel); the feature partition's weight from its columns; any other tensor is whole.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from autopar.models.init import ParamInit, fill_, init_buffers_, retie_, tied_parameters
from autopar.runtime.names import clean_name

Offsets = dict[str, tuple[int, ...]]  # parameter name -> where its plain local tensor starts in the full tensor


def on_meta(module: nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())


def apply_materialization(module: nn.Module, table: dict[str, ParamInit], seed: int, device: torch.device, offsets: Optional[Offsets] = None) -> int:
    """Allocate `module` (one chunk, already parallelized on meta) on `device` and fill it; in
    place. Returns the number of values this rank drew (its shard)."""
    ties = tied_parameters(module)
    module.to_empty(device=device)
    retie_(module, ties)
    drawn = 0
    with torch.no_grad():
        for name, p in module.named_parameters():
            name = clean_name(name)
            local, offset = local_box(p, (offsets or {}).get(name))
            if local.numel():
                fill_(local, table[name], seed, offset)
            drawn += local.numel()
        init_buffers_(module)
    return drawn


def local_box(p: torch.Tensor, offset: Optional[tuple[int, ...]] = None) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The tensor this rank stores for `p` and where it starts in p's full tensor."""
    if isinstance(p, DTensor):
        shape, start = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
        local = p.to_local()
        if tuple(local.shape) != tuple(shape):
            raise RuntimeError(f"local shard {tuple(local.shape)} != {tuple(shape)} from placements {p.placements}")
        return local, tuple(start)
    return p, offset or (0,) * p.dim()
