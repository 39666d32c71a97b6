"""Expert parallelism: what the runtime's all-to-all dispatch (techniques/expert/apply.py) runs."""

from __future__ import annotations

from typing import Optional

from autopar.spec.enums import DataPartition
from autopar.spec.strategy import Strategy
from autopar.techniques.base import RuleInput


def check_expert(s: Strategy, r: RuleInput) -> Optional[str]:
    """ep ranks are data-parallel ranks (each routes its own tokens) holding experts / ep
    experts of every MoE layer (models/moe.py expert_modules)."""
    if s.ep == 1:
        return None
    f = r.facts
    if not f.experts:
        return f"ep({s.ep}) > 1 needs mixture-of-experts layers; {f.name} has none (a built-in gpt/llama takes experts: E, top_k: K)"
    if not f.expert_modules:
        return (f"ep({s.ep}): the runtime splits stacked experts (models/moe.py's GroupedExperts, or transformers' "
                f"forward(hidden_states, top_k_index, top_k_weights) modules); {f.name}'s {f.experts} experts are neither: use ep=1")
    if f.experts % s.ep:
        return f"ep({s.ep}) must divide experts({f.experts}): {f.experts} % {s.ep} = {f.experts % s.ep}"
    if s.dp % s.ep:
        return f"ep({s.ep}) must divide dp({s.dp}): expert-parallel ranks are data-parallel ranks, each routing its own tokens"
    if s.is_async or s.subnet or s.threads > 1 or s.data_partition is DataPartition.FEATURES:
        return f"ep({s.ep}) needs synchronous sample-parallel replicas (sync=sync, subnet=false, threads=1, data_partition=samples)"
    if s.zero == 1:
        return (f"ep({s.ep}) with zero=1: ZeroRedundancyOptimizer broadcasts every parameter from its owner over dp, "
                "overwriting the experts the other ranks hold; use zero=0, 2 or 3")
    if s.pp > 1 and f.pipeline_split == "graph":
        return (f"ep({s.ep}) with pp({s.pp}): {f.name}'s pipeline stages come from tracing its graph, and the "
                "all-to-all's data-dependent splits cannot be traced; use pp=1 (or a built-in family, whose stages are modules)")
    if s.offload or s.dp_shard is not None:
        return f"ep({s.ep}) with {'offload' if s.offload else f'dp_shard({s.dp_shard})'}: not built (experts stay whole on their ranks); drop it or use ep=1"
    return None


def check_moe_layers(s: Strategy, r: RuleInput) -> Optional[str]:
    """Routing reads plain token tensors; sequence parallelism hands the layer DTensor shards."""
    if r.facts.expert_modules and s.sequence_parallel:
        return "sequence_parallel=true: the MoE layers route plain token tensors, not sequence-sharded DTensors; use sequence_parallel=false"
    return None
