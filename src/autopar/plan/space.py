"""The search space, declared as data: ordered dimensions and named pruning predicates.

A candidate is built dimension by dimension; each dimension lists its values given
the choices made so far, and each predicate rejects a partial candidate as soon as
the fields it reads are bound, with a name the planner reports.

Structure dimensions (devices, sync, partition, threads, tp, pp, dp) fix where work
and data go. Knob dimensions (micro-batch, schedule, sequence parallel, recompute,
ZeRO stage) are searched inside each structure by the planner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

from autopar.profile.types import ModelProfile, is_mlp_layer
from autopar.spec.cluster import Cluster
from autopar.spec.enums import DataPartition, Recompute, Schedule, Sync

Partial = dict[str, Any]


@dataclass(frozen=True)
class SearchContext:
    profile: ModelProfile
    cluster: Cluster
    global_batch: int
    max_tp: int  # tensor parallel beyond this is not searched (2 nodes' worth by default)
    fewer_devices: bool = True  # also try using fewer devices than the cluster has


@dataclass(frozen=True)
class Dimension:
    name: str
    values: Callable[[SearchContext, Partial], Iterable[Any]]


@dataclass(frozen=True)
class Predicate:
    name: str
    reads: tuple[str, ...]
    ok: Callable[[SearchContext, Partial], bool]


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _device_counts(ctx: SearchContext, _: Partial) -> list[int]:
    n = ctx.cluster.devices
    if not ctx.fewer_devices:
        return [n]
    counts, d = {n}, n
    while d > 1:  # halving: the usual way a job shrinks
        d //= 2
        counts.add(d)
    nodes = 1
    while nodes < ctx.cluster.nodes:  # whole nodes, in powers of two
        counts.add(nodes * ctx.cluster.devices_per_node)
        nodes *= 2
    return sorted(counts, reverse=True)


def _tp_values(ctx: SearchContext, c: Partial) -> list[int]:
    per_proc = c["devices"] // c["threads"]
    return [t for t in _divisors(per_proc) if t <= ctx.max_tp]


def _pp_values(ctx: SearchContext, c: Partial) -> list[int]:
    rest = c["devices"] // (c["threads"] * c["tp"])
    return [p for p in _divisors(rest) if p == 1 or p <= ctx.profile.pipeline_blocks]


def _threads_values(ctx: SearchContext, c: Partial) -> list[int]:
    if not ctx.cluster.device.shared_memory:
        return [1]
    return [t for t in _divisors(c["devices"]) if t <= ctx.cluster.devices_per_node]


STRUCTURE: tuple[Dimension, ...] = (
    Dimension("devices", _device_counts),
    Dimension("sync", lambda ctx, c: [Sync.SYNC, Sync.ASYNC]),
    Dimension("data_partition", lambda ctx, c: [DataPartition.SAMPLES, DataPartition.FEATURES]),
    Dimension("subnet", lambda ctx, c: [False, True]),
    Dimension("threads", _threads_values),
    Dimension("tp", _tp_values),
    Dimension("pp", _pp_values),
    Dimension("dp", lambda ctx, c: [c["devices"] // (c["threads"] * c["tp"] * c["pp"])]),
)

PREDICATES: tuple[Predicate, ...] = (
    Predicate("dp divides the global batch", ("dp",), lambda ctx, c: ctx.global_batch % c["dp"] == 0),
    Predicate("tp divides every tensor-parallel width", ("tp",),
              lambda ctx, c: c["tp"] == 1 or (bool(ctx.profile.tp_units) and all(u % c["tp"] == 0 for u in ctx.profile.tp_units))),
    Predicate("asynchronous updates need independent replicas (no tp, no pp) and several workers", ("sync", "tp", "pp", "dp", "threads"),
              lambda ctx, c: c["sync"] is Sync.SYNC or (c["tp"] == 1 and c["pp"] == 1 and (c["dp"] > 1 or c["threads"] > 1))),
    Predicate("feature partitioning needs a Linear input layer and only dp", ("data_partition", "tp", "pp", "sync", "subnet", "dp"),
              lambda ctx, c: c["data_partition"] is DataPartition.SAMPLES
              or (ctx.profile.feature_dim is not None and c["tp"] == c["pp"] == 1 and c["sync"] is Sync.SYNC
                  and not c["subnet"] and 1 < c["dp"] <= ctx.profile.feature_dim)),
    Predicate("subnetwork training needs MLP Linear pairs, only dp, and at most 8 workers (the published regime)",
              ("subnet", "tp", "pp", "dp", "sync"),
              lambda ctx, c: not c["subnet"] or (1 < c["dp"] <= 8 and c["tp"] == c["pp"] == 1 and c["sync"] is Sync.SYNC
                                                 and any(is_mlp_layer(l.stats) for l in ctx.profile.layers))),
    Predicate("threads combine only with dp", ("threads", "tp", "pp"), lambda ctx, c: c["threads"] == 1 or c["tp"] == c["pp"] == 1),
)


def structures(ctx: SearchContext, pruned: Optional[dict[str, int]] = None) -> Iterator[Partial]:
    """Every structure that passes the predicates; `pruned` counts rejections by predicate name."""
    by_last_read: dict[str, list[Predicate]] = {}
    order = [d.name for d in STRUCTURE]
    for p in PREDICATES:
        last = max(p.reads, key=order.index)
        by_last_read.setdefault(last, []).append(p)

    def walk(i: int, partial: Partial) -> Iterator[Partial]:
        if i == len(STRUCTURE):
            yield dict(partial)
            return
        dim = STRUCTURE[i]
        for value in dim.values(ctx, partial):
            partial[dim.name] = value
            failed = next((p for p in by_last_read.get(dim.name, ()) if not p.ok(ctx, partial)), None)
            if failed is None:
                yield from walk(i + 1, partial)
            elif pruned is not None:
                pruned[failed.name] = pruned.get(failed.name, 0) + 1
        partial.pop(dim.name, None)

    yield from walk(0, {})


# ------------------------------------------------------------------ knobs


def microbatches(ctx: SearchContext, c: Partial) -> list[int]:
    """Micro-batch sizes, largest first. Without a pipeline, splitting the batch only saves
    memory; with one, more micro-batches shrink the bubble, so sizes down to 1 are tried."""
    local = ctx.global_batch if c["data_partition"] is DataPartition.FEATURES else ctx.global_batch // c["dp"]
    sizes = [b for b in _divisors(local) if (b & (b - 1) == 0 and b <= 64) or b == local]  # powers of two, or all
    if c["pp"] > 1:
        sizes = [b for b in sizes if local // b >= c["pp"]]
    return sorted(sizes, reverse=True)


def schedules(ctx: SearchContext, c: Partial, m: int) -> list[tuple[Schedule, int]]:
    """1F1B, and interleaved with v chunks per rank; GPipe is never searched: it takes the
    time of 1F1B and holds all m micro-batches (the planner reports it as dominated)."""
    if c["pp"] == 1:
        return [(Schedule.ONE_F_ONE_B, 1)]
    layers = ctx.profile.pipeline_blocks
    out = [(Schedule.ONE_F_ONE_B, 1)]
    if m % c["pp"] == 0:
        out += [(Schedule.INTERLEAVED, v) for v in (2, 4, 8) if c["pp"] * v <= layers]
    return out


def sequence_parallel(c: Partial) -> list[bool]:
    """With tp > 1, sequence parallelism moves the same bytes (reduce-scatter + all-gather
    instead of all-reduce), divides norms and dropout by tp and their activations too:
    it dominates (Korthikanti et al. 2022, Table 4), so only it is searched."""
    return [c["tp"] > 1]


def recomputes(ctx: SearchContext) -> list[Recompute]:
    has_core = any(l.stats.has_core for l in ctx.profile.layers)
    return [Recompute.NONE, Recompute.SELECTIVE, Recompute.FULL] if has_core else [Recompute.NONE, Recompute.FULL]


def zero_stages(c: Partial) -> list[int]:
    """ZeRO stages, cheapest first; only for synchronous sample-parallel replicas."""
    if c["dp"] == 1 or c["sync"] is Sync.ASYNC or c["subnet"] or c["data_partition"] is DataPartition.FEATURES:
        return [0]
    return [0, 1, 2, 3]
