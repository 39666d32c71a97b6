"""Synchronous data parallelism with DistributedDataParallel.

Gradients are all-reduced in buckets (bucket_cap_mb, 25 MB by default) while backward
runs, so communication overlaps compute. Buffers of the built-in models are constants
(causal masks, rotary tables), so they are not re-broadcast every forward. With
gradient accumulation or a pipeline, only the last micro-batch's backward syncs
(`no_sync`; torch.distributed.pipelining does this itself for DDP stages).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

BUCKET_CAP_MB = 25  # PyTorch's default; the size Li et al. (VLDB 2020) found best on their clusters


def apply_ddp(module: nn.Module, group, device: torch.device, bucket_cap_mb: int = BUCKET_CAP_MB) -> DDP:
    device_ids: Optional[list[int]] = [device.index] if device.type == "cuda" else None
    return DDP(module, device_ids=device_ids, process_group=group, bucket_cap_mb=bucket_cap_mb, forward_sync_buffers=False)
