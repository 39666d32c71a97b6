"""Data parallelism by feature dimensions: the input Linear split by columns over dp."""

from __future__ import annotations

from typing import Optional

from autopar.spec.enums import DataPartition
from autopar.spec.strategy import Strategy
from autopar.techniques.base import RuleInput


def check_features(s: Strategy, r: RuleInput) -> Optional[str]:
    if s.data_partition is not DataPartition.FEATURES:
        return None
    dim = r.facts.feature_dim
    if dim is None:
        return f"data_partition=features needs a model with a feature layer (mlp, wide_linear); {r.facts.name} has none"
    if s.tp > 1 or s.pp > 1 or s.zero or s.is_async:
        return "data_partition=features splits the input layer over dp; it needs tp(1), pp(1), zero(0), sync=sync"
    if s.dp > dim:
        return f"data_partition=features: dp({s.dp}) > input features({dim})"
    return None
