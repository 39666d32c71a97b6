"""Independent subnetwork training: partitioned hidden units, no gradient sync."""

from __future__ import annotations

from typing import Optional

from autopar.spec.enums import DataPartition
from autopar.spec.strategy import Strategy
from autopar.techniques.base import RuleInput


def check_subnet(s: Strategy, r: RuleInput) -> Optional[str]:
    if not s.subnet:
        return None
    if s.microbatch is not None:
        return f"microbatch({s.microbatch}): subnet=true trains each subnetwork on its whole share of the batch; leave microbatch out"
    if s.dp == 1 or s.tp > 1 or s.pp > 1 or s.zero or s.is_async or s.data_partition is DataPartition.FEATURES:
        return "subnet=true needs dp > 1 with tp(1), pp(1), zero(0), sync=sync and data_partition=samples"
    widths = r.facts.hidden_widths
    if not widths:
        return f"subnet=true partitions MLP/FFN hidden units; model {r.facts.name} has none"
    if min(widths) < s.dp:
        return f"subnet=true: the narrowest hidden layer ({min(widths)} units) cannot be split over dp({s.dp})"
    return None


def check_priced_subnet(s: Strategy, r: RuleInput) -> Optional[str]:
    if s.subnet and not r.facts.mlp_layers:
        return (f"subnet=true: the cost model prices subnetwork training only over MLP layers (Linear pairs without "
                f"attention); model {r.facts.name} has none (autopar run accepts it; it cannot be estimated or planned)")
    return None
