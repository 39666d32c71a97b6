"""Pipeline parallelism in the search: the degree, then schedules per micro-batch count."""

from __future__ import annotations

from autopar.spec.enums import Schedule
from autopar.techniques.base import Dimension, Partial
from autopar.util import divisors


def pp_values(ctx, c: Partial) -> list[int]:
    rest = c["devices"] // (c["threads"] * c["tp"])
    return [p for p in divisors(rest) if p == 1 or p <= ctx.facts.layers]


def schedules(ctx, c: Partial, m: int) -> list[tuple[Schedule, int]]:
    """1F1B, and interleaved with v chunks per rank; GPipe is never searched: it takes the
    time of 1F1B and holds all m micro-batches (the planner reports it as dominated)."""
    if c["pp"] == 1:
        return [(Schedule.ONE_F_ONE_B, 1)]
    out = [(Schedule.ONE_F_ONE_B, 1)]
    if m % c["pp"] == 0:
        out += [(Schedule.INTERLEAVED, v) for v in (2, 4, 8) if c["pp"] * v <= ctx.facts.layers]
    return out


DIMENSIONS = (Dimension("pp", pp_values, order=60),)
