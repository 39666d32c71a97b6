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
    """Off, and on where the rules allow it (tp > 1, a transformer whose seq_len tp divides).
    On moves the same bytes (reduce-scatter + all-gather instead of all-reduce) and divides
    norms, dropout and their activations by tp (Korthikanti et al. 2022, Table 4), but
    both are searched: the search space, not an argument, decides."""
    s = Strategy(tp=c["tp"], sequence_parallel=True)
    on = c["tp"] > 1 and check_sequence_parallel(s, RuleInput(ctx.facts, ctx.global_batch)) is None
    return [False, True] if on else [False]


DIMENSIONS = (Dimension("tp", tp_values, order=50),)
PREDICATES = (
    Predicate("tp divides every tensor-parallel width", ("tp",),
              lambda ctx, c: check_tensor_parallel(Strategy(tp=c["tp"]), RuleInput(ctx.facts, ctx.global_batch)) is None),
)
