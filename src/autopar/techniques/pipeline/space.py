"""Pipeline parallelism in the search: the degree, then schedules per micro-batch count."""

from __future__ import annotations

from autopar.spec.enums import Schedule
from autopar.techniques.base import Dimension, Partial
from autopar.util import divisors


def pp_values(ctx, c: Partial) -> list[int]:
    rest = c["devices"] // (c["threads"] * c["tp"])
    return [p for p in divisors(rest) if p == 1 or p <= ctx.facts.layers]


def schedules(ctx, c: Partial, m: int) -> list[tuple[Schedule, int]]:
    """Every (schedule, chunks per rank) the rules allow for m micro-batches: 1F1B, GPipe, and
    interleaved with every v >= 2 that leaves each chunk a block (pp * v <= blocks) when pp
    divides m (Narayanan et al. 2021, Sec. 2.2.2)."""
    if c["pp"] == 1:
        return [(Schedule.ONE_F_ONE_B, 1)]
    out = [(Schedule.ONE_F_ONE_B, 1), (Schedule.GPIPE, 1)]
    if m % c["pp"] == 0 and ctx.facts.pipeline_split != "graph":
        out += [(Schedule.INTERLEAVED, v) for v in range(2, ctx.facts.layers // c["pp"] + 1)]
    return out


DIMENSIONS = (Dimension("pp", pp_values, order=60),)
