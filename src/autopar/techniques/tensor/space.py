"""Tensor parallelism in the search: degrees up to ctx.max_tp; sequence parallel where allowed."""

from __future__ import annotations

from autopar.spec.strategy import Strategy
from autopar.techniques.base import Dimension, Partial, Predicate, RuleInput
from autopar.techniques.tensor.rules import check_sequence_parallel, check_tensor_parallel
from autopar.util import divisors


def tp_values(ctx, c: Partial) -> list[int]:
    per_proc = c["devices"] // c["threads"]
    return [t for t in divisors(per_proc) if t <= ctx.max_tp]


def sequence_parallel(ctx, c: Partial) -> list[bool]:
    """With tp > 1, sequence parallelism moves the same bytes (reduce-scatter + all-gather
    instead of all-reduce), divides norms and dropout by tp and their activations too:
    it dominates (Korthikanti et al. 2022, Table 4), so only it is searched where the
    rules allow it (a transformer whose seq_len tp divides)."""
    s = Strategy(tp=c["tp"], sequence_parallel=True)
    return [c["tp"] > 1 and check_sequence_parallel(s, RuleInput(ctx.facts, ctx.global_batch)) is None]


DIMENSIONS = (Dimension("tp", tp_values, order=50),)
PREDICATES = (
    Predicate("tp divides every tensor-parallel width", ("tp",),
              lambda ctx, c: check_tensor_parallel(Strategy(tp=c["tp"]), RuleInput(ctx.facts, ctx.global_batch)) is None),
)
