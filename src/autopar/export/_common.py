"""What the exporters share: the model's dimensions and how the runs are laid out."""

from __future__ import annotations

from typing import Any, Optional

from autopar.spec.cluster import Cluster
from autopar.spec.recipe import GPTSpec, LlamaSpec, Recipe
from autopar.spec.strategy import Strategy


def transformer_dims(recipe: Recipe) -> Optional[dict[str, Any]]:
    """layers, hidden, heads, kv heads, ffn, seq_len, vocab of a built-in decoder (None otherwise)."""
    m = recipe.model
    if not isinstance(m, (GPTSpec, LlamaSpec)):
        return None
    kv = m.n_kv_heads if isinstance(m, LlamaSpec) else m.heads
    return {"family": m.family, "layers": m.layers, "hidden": m.hidden, "heads": m.heads, "kv_heads": kv, "ffn": m.ffn,
            "seq_len": m.seq_len, "vocab": m.vocab, "experts": m.experts, "top_k": m.top_k}


def nodes_and_procs(s: Strategy, cluster: Cluster) -> tuple[int, int]:
    """(nodes, processes per node) the strategy's devices take, filled node by node."""
    per_node = min(cluster.devices_per_node, s.devices)
    return -(-s.devices // per_node), per_node








def replica_problem(s: Strategy, who: str) -> Optional[str]:
    """Every launcher here trains synchronous sample-parallel replicas, one process per device."""
    if s.threads > 1 or s.is_async or s.subnet or s.data_partition.value != "samples":
        return f"{who} trains synchronous sample-parallel replicas (no threads, local SGD, subnets or feature partitions)"
    return None
