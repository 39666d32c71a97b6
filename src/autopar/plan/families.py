"""Technique families: how the planner groups strategies to say why each kind lost."""

from __future__ import annotations

from autopar.spec.enums import DataPartition, Sync
from autopar.spec.strategy import Strategy

FAMILIES = (
    "single device",
    "shared-memory workers (threads)",
    "Hogwild (asynchronous threads)",
    "data parallel (DDP)",
    "sharded data parallel (ZeRO-1/2)",
    "fully sharded data parallel (ZeRO-3/FSDP)",
    "hybrid sharded data parallel (HSDP)",
    "host offload (ZeRO-Offload)",
    "expert parallel (MoE)",
    "context parallel (long sequences)",
    "asynchronous data parallel (local SGD)",
    "data parallel by features",
    "independent subnetworks",
    "tensor parallel",
    "pipeline parallel",
    "hybrid (data x tensor x pipeline)",
)


def family_of(s: Strategy) -> str:
    if s.offload:
        return "host offload (ZeRO-Offload)"
    if s.ep > 1:
        return "expert parallel (MoE)"
    if s.cp > 1:
        return "context parallel (long sequences)"
    if s.devices == 1:
        return "single device"
    if s.data_partition is DataPartition.FEATURES:
        return "data parallel by features"
    if s.subnet:
        return "independent subnetworks"
    if s.sync is Sync.ASYNC:
        return "asynchronous data parallel (local SGD)" if s.dp > 1 else "Hogwild (asynchronous threads)"
    if s.threads > 1 and s.dp == 1:
        return "shared-memory workers (threads)"
    if s.tp == 1 and s.pp == 1:
        if s.zero == 0:
            return "data parallel (DDP)"
        if s.dp_shard is not None:
            return "hybrid sharded data parallel (HSDP)"
        return "sharded data parallel (ZeRO-1/2)" if s.zero < 3 else "fully sharded data parallel (ZeRO-3/FSDP)"
    if s.dp == 1 and s.pp == 1:
        return "tensor parallel"
    if s.dp == 1 and s.tp == 1:
        return "pipeline parallel"
    return "hybrid (data x tensor x pipeline)"
