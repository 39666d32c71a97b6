"""Feature partitioning in the search."""

from __future__ import annotations

from autopar.spec.enums import DataPartition
from autopar.spec.strategy import Strategy
from autopar.techniques.base import Dimension, Partial, Predicate, RuleInput
from autopar.techniques.features.rules import check_features


def _ok(ctx, c: Partial) -> bool:
    one_worker = c["data_partition"] is DataPartition.FEATURES and c["dp"] == 1  # partitions nothing: search restriction
    s = Strategy(dp=c["dp"], tp=c["tp"], pp=c["pp"], sync=c["sync"], data_partition=c["data_partition"])
    return not one_worker and check_features(s, RuleInput(ctx.facts, ctx.global_batch)) is None


DIMENSIONS = (Dimension("data_partition", lambda ctx, c: [DataPartition.SAMPLES, DataPartition.FEATURES], order=20),)
PREDICATES = (
    Predicate("feature partitioning needs a Linear input layer, only dp, and dp > 1", ("data_partition", "tp", "pp", "sync", "dp"), _ok),
)
