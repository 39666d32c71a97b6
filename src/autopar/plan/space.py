"""The search space, assembled from the techniques' declared dimensions and predicates.

A candidate is built dimension by dimension (`devices`, then each technique's structure
dimension in its declared order: sync, data_partition, subnet, threads, tp, pp, dp);
each dimension lists its values given the choices made so far, and each predicate
rejects a partial candidate as soon as the fields it reads are bound, with a name the
planner reports.

Knob dimensions (micro-batch, schedule, sequence parallel, recompute, ZeRO stage, sync
period) are searched inside each structure by the planner, from the techniques'
space modules.

The predicates are fast pre-filters, never the judge: each asks the techniques' rules
about the structure with neutral knobs, so it rejects only what every knob setting
would fail, plus two named search restrictions (a feature partition over one worker;
subnetworks beyond the published regime). The planner still checks every candidate
against all the rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

from autopar.profile.facts import ModelFacts
from autopar.profile.types import ModelProfile
from autopar.spec.cluster import Cluster
from autopar.spec.enums import Precision
from autopar.spec.strategy import Strategy
from autopar.techniques import dimensions, predicates
from autopar.techniques.base import Dimension, Partial, Predicate


@dataclass(frozen=True)
class SearchContext:
    profile: ModelProfile
    cluster: Cluster
    global_batch: int
    precision: Precision
    max_tp: int  # tensor parallel beyond this is not searched (2 nodes' worth by default)
    fewer_devices: bool = True  # also try using fewer devices than the cluster has
    pinned_devices: Optional[int] = None  # the count --fix's degrees imply (dp*tp*pp, or a multiple of tp*pp)

    @property
    def facts(self) -> ModelFacts:
        return self.profile.facts


def device_counts(ctx: SearchContext, _: Partial) -> list[int]:
    n = ctx.cluster.devices
    if not ctx.fewer_devices:
        return [n]
    counts, d = {n}, n
    if ctx.pinned_devices and ctx.pinned_devices <= n:
        counts.add(ctx.pinned_devices)
    while d > 1:  # halving: the usual way a job shrinks
        d //= 2
        counts.add(d)
    nodes = 1
    while nodes < ctx.cluster.nodes:  # whole nodes, in powers of two
        counts.add(nodes * ctx.cluster.devices_per_node)
        nodes *= 2
    return sorted(counts, reverse=True)


STRUCTURE: tuple[Dimension, ...] = (Dimension("devices", device_counts, order=0), *dimensions())
PREDICATES: tuple[Predicate, ...] = predicates()
STRUCTURE_FIELDS = tuple(d.name for d in STRUCTURE if d.name != "devices")


def neutral(c: Partial) -> Strategy:
    """The structure bound so far, every knob neutral (no micro-batches, no ZeRO, ...)."""
    return Strategy(**{k: c[k] for k in STRUCTURE_FIELDS if k in c})


def structures(ctx: SearchContext, pruned: Optional[dict[str, int]] = None) -> Iterator[Partial]:
    """Every structure that passes the predicates; `pruned` counts rejections by predicate name."""
    by_last_read: dict[str, list[Predicate]] = {}
    order = [d.name for d in STRUCTURE]
    for p in PREDICATES:
        last = max(p.reads, key=order.index)
        by_last_read.setdefault(last, []).append(p)

    verdicts: dict[tuple, bool] = {}  # (predicate, the values it reads) -> ok: they are pure

    def ok(p: Predicate, partial: Partial) -> bool:
        key = (id(p), *(partial[f] for f in p.reads))
        found = verdicts.get(key)
        if found is None:
            found = verdicts[key] = p.ok(ctx, partial)
        return found

    def walk(i: int, partial: Partial) -> Iterator[Partial]:
        if i == len(STRUCTURE):
            yield dict(partial)
            return
        dim = STRUCTURE[i]
        for value in dim.values(ctx, partial):
            partial[dim.name] = value
            failed = next((p for p in by_last_read.get(dim.name, ()) if not ok(p, partial)), None)
            if failed is None:
                yield from walk(i + 1, partial)
            elif pruned is not None:
                pruned[failed.name] = pruned.get(failed.name, 0) + 1
        partial.pop(dim.name, None)

    yield from walk(0, {})
