"""Host offload: what FSDP2's CPUOffloadPolicy can run, and where offloading means anything."""

from __future__ import annotations

from typing import Optional

from autopar.spec.enums import DataPartition
from autopar.spec.strategy import Strategy
from autopar.techniques.base import RuleInput


def check_offload(s: Strategy, r: RuleInput) -> Optional[str]:
    """CPUOffloadPolicy keeps FSDP2's sharded parameters on the host: ZeRO-3, synchronous
    sample-parallel replicas, one process per device."""
    if not s.offload:
        return None
    if s.zero != 3:
        return f"offload=true keeps FSDP2's parameter shards in host memory (CPUOffloadPolicy), which is ZeRO-3; zero({s.zero}): use zero=3"
    if s.is_async or s.subnet or s.threads > 1 or s.data_partition is DataPartition.FEATURES:
        return "offload=true needs synchronous sample-parallel replicas (sync=sync, subnet=false, threads=1, data_partition=samples)"
    return None


def check_offload_cluster(s: Strategy, shared_memory: bool, device: str) -> Optional[str]:
    """Priced only on accelerators: on CPU cores device memory is host memory (the runtime
    still runs CPUOffloadPolicy there, as on a GPU, for tests)."""
    if s.offload and shared_memory:
        return f"offload=true moves states from device to host memory; {device} devices share the host's memory: use offload=false"
    return None
