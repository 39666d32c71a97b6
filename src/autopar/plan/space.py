"""The search space, declared as data: ordered dimensions and named pruning predicates.

A candidate is built dimension by dimension; each dimension lists its values given
the choices made so far, and each predicate rejects a partial candidate as soon as
the fields it reads are bound, with a name the planner reports.

Structure dimensions (devices, sync, partition, threads, tp, pp, dp) fix where work
and data go. Knob dimensions (micro-batch, schedule, sequence parallel, recompute,
ZeRO stage) are searched inside each structure by the planner.

The predicates and knob lists are fast pre-filters, never the judge: each predicate
asks the shared rules (autopar.validity) about the structure with neutral knobs, so it
rejects only what every knob setting would fail, plus two named search restrictions
(a feature partition over one worker; subnetworks beyond the published regime). The
planner still checks every candidate against all the rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Iterable, Iterator, Optional

from autopar import validity
from autopar.profile.types import ModelProfile
from autopar.spec.cluster import Cluster
from autopar.spec.enums import DataPartition, Precision, Recompute, Schedule, Sync
from autopar.spec.strategy import Strategy

Partial = dict[str, Any]


@dataclass(frozen=True)
class SearchContext:
    profile: ModelProfile
    cluster: Cluster
    global_batch: int
    precision: Precision
    max_tp: int  # tensor parallel beyond this is not searched (2 nodes' worth by default)
    fewer_devices: bool = True  # also try using fewer devices than the cluster has

    @cached_property
    def facts(self) -> validity.ModelFacts:
        return validity.facts_from_profile(self.profile)


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
    return [p for p in _divisors(rest) if p == 1 or p <= ctx.facts.layers]


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

_STRUCTURE_FIELDS = ("dp", "tp", "pp", "threads", "sync", "data_partition", "subnet")
MAX_SUBNET_WORKERS = 8  # the published regime of independent subnetwork training (Yuan et al. 2022: 2-8 workers)


def _neutral(c: Partial) -> Strategy:
    """The structure bound so far, every knob neutral (no micro-batches, no ZeRO, ...)."""
    return Strategy(**{k: c[k] for k in _STRUCTURE_FIELDS if k in c})


def _features_ok(ctx: SearchContext, c: Partial) -> bool:
    one_worker = c["data_partition"] is DataPartition.FEATURES and c["dp"] == 1  # partitions nothing: search restriction
    return not one_worker and validity.check_features(_neutral(c), ctx.facts) is None


def _subnet_ok(ctx: SearchContext, c: Partial) -> bool:
    s = _neutral(c)
    if s.subnet and s.dp > MAX_SUBNET_WORKERS:  # search restriction
        return False
    return validity.check_subnet(s, ctx.facts) is None and validity.check_priced_subnet(s, ctx.facts) is None


PREDICATES: tuple[Predicate, ...] = (
    Predicate("dp divides the global batch", ("sync", "data_partition", "threads", "dp"),
              lambda ctx, c: validity.check_batch(_neutral(c), ctx.global_batch) is None),
    Predicate("tp divides every tensor-parallel width", ("tp",),
              lambda ctx, c: validity.check_tensor_parallel(_neutral(c), ctx.facts) is None),
    Predicate("asynchronous updates need independent replicas (no tp, no pp) and several workers (Hogwild: dp=1)",
              ("sync", "tp", "pp", "dp", "threads"), lambda ctx, c: validity.check_async(_neutral(c)) is None),
    Predicate("feature partitioning needs a Linear input layer, only dp, and dp > 1", ("data_partition", "tp", "pp", "sync", "dp"),
              _features_ok),
    Predicate(f"subnetwork training needs MLP Linear pairs, only dp, and at most {MAX_SUBNET_WORKERS} workers (the published regime)",
              ("subnet", "sync", "data_partition", "tp", "pp", "dp"), _subnet_ok),
    Predicate("threads combine only with dp (what the cost model prices)", ("threads", "tp", "pp"),
              lambda ctx, c: validity.check_priced_threads(_neutral(c)) is None),
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
    memory; with one, more micro-batches shrink the bubble, so sizes down to 1 are tried.
    Subnetworks and Hogwild workers take no micro-batches (validity.check_subnet, check_async)."""
    local = ctx.global_batch if c["data_partition"] is DataPartition.FEATURES else ctx.global_batch // c["dp"]
    if c["subnet"] or (c["sync"] is Sync.ASYNC and c["threads"] > 1):
        return [local]
    sizes = [b for b in _divisors(local) if (b & (b - 1) == 0 and b <= 64) or b == local]  # powers of two, or all
    if c["pp"] > 1:
        sizes = [b for b in sizes if local // b >= c["pp"]]
    return sorted(sizes, reverse=True)


def schedules(ctx: SearchContext, c: Partial, m: int) -> list[tuple[Schedule, int]]:
    """1F1B, and interleaved with v chunks per rank; GPipe is never searched: it takes the
    time of 1F1B and holds all m micro-batches (the planner reports it as dominated)."""
    if c["pp"] == 1:
        return [(Schedule.ONE_F_ONE_B, 1)]
    layers = ctx.facts.layers
    out = [(Schedule.ONE_F_ONE_B, 1)]
    if m % c["pp"] == 0:
        out += [(Schedule.INTERLEAVED, v) for v in (2, 4, 8) if c["pp"] * v <= layers]
    return out


def sequence_parallel(ctx: SearchContext, c: Partial) -> list[bool]:
    """With tp > 1, sequence parallelism moves the same bytes (reduce-scatter + all-gather
    instead of all-reduce), divides norms and dropout by tp and their activations too:
    it dominates (Korthikanti et al. 2022, Table 4), so only it is searched where the
    rules allow it (a transformer whose seq_len tp divides)."""
    s = Strategy(tp=c["tp"], sequence_parallel=True)
    return [c["tp"] > 1 and validity.check_sequence_parallel(s, ctx.facts) is None]


def recomputes(ctx: SearchContext) -> list[Recompute]:
    """Those the model allows (selective needs attention cores, full a `layers` list), least first."""
    return [rc for rc in Recompute if validity.check_recompute(Strategy(recompute=rc), ctx.facts) is None]


def zero_stages(c: Partial) -> list[int]:
    """ZeRO stages, cheapest first; only for synchronous sample-parallel replicas."""
    if c["dp"] == 1 or c["sync"] is Sync.ASYNC or c["subnet"] or c["data_partition"] is DataPartition.FEATURES:
        return [0]
    return [0, 1, 2, 3]


def sync_periods(c: Partial) -> tuple[int, ...]:
    """Steps between parameter averaging for local SGD and subnetwork training (H): longer
    saves communication and costs statistical efficiency (cost.convergence)."""
    if c["sync"] is Sync.ASYNC and c["threads"] == 1 or c["subnet"]:
        return (2, 4, 8)
    return (4,) if c["sync"] is Sync.ASYNC else (1,)
