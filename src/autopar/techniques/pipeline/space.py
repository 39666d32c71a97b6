"""Pipeline parallelism in the search: the degree, then schedules per micro-batch count."""

from __future__ import annotations

from autopar.spec.enums import Schedule
from autopar.techniques.base import Dimension, Partial
from autopar.util import divisors


def pp_values(ctx, c: Partial) -> list[int]:
    rest = c["devices"] // (c["threads"] * c["tp"])
    return [p for p in divisors(rest) if p == 1 or p <= ctx.facts.layers]


def schedules(ctx, c: Partial, m: int) -> list[tuple[Schedule, int]]:
    """Every (schedule, chunks per rank) the rules allow for m micro-batches: 1F1B, GPipe,
    zero bubble with one chunk (ZB-H1, Qi et al. 2023), and interleaved 1F1B and interleaved
    zero bubble with every v >= 2 that leaves each chunk a block (pp * v <= blocks) when pp
    divides m (Narayanan et al. 2021, Sec. 2.2.2); ZB-V with its two chunks (Qi et al. 2023, Sec. 6).
    DualPipeV is not searched: on the same V layout its bubble exceeds ZB-V's and it holds
    one more micro-batch (pipeline/cost.py dualpipev_bubble_s), so it never beats ZB-V;
    --fix schedule=dualpipev prices it (plan/planner.py _pinned_schedules)."""
    if c["pp"] == 1:
        return [(Schedule.ONE_F_ONE_B, 1)]
    out = [(Schedule.ONE_F_ONE_B, 1), (Schedule.GPIPE, 1)]
    if ctx.facts.pipeline_split == "graph":
        return out
    rounds = max(1, m // c["pp"])
    if m % rounds == 0:
        out.append((Schedule.ZERO_BUBBLE, 1))
    if m >= c["pp"] and 2 * c["pp"] <= ctx.facts.layers:  # ZB-V: two chunks per rank in a V
        out.append((Schedule.ZBV, 2))
    if m % c["pp"] == 0:
        chunks = range(2, ctx.facts.layers // c["pp"] + 1)
        out += [(Schedule.INTERLEAVED, v) for v in chunks]
        out += [(Schedule.ZERO_BUBBLE, v) for v in chunks]
    return out


DIMENSIONS = (Dimension("pp", pp_values, order=60),)
