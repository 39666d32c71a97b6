"""Host offload in the search: a variant of the sharding knob (techniques/data/space.py)."""

from __future__ import annotations


def offload_allowed(ctx) -> bool:
    """Offload is searched on accelerators with separate memory; on CPU cores device memory
    is host memory, so there is nothing to offload to."""
    return not ctx.cluster.device.shared_memory
