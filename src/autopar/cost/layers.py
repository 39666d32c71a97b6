"""Per-layer costs of one micro-batch on one rank, tabulated with prefix sums.

A `LayerTable` holds, for one (micro-batch, tensor-parallel degree, sequence
parallel, recompute) setting, every layer's forward/backward time, its
tensor-parallel communication, recompute time, parameters and activation bytes,
as prefix sums: the cost of any contiguous range of layers (a pipeline stage) is
one subtraction. Identical layers share one computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from itertools import accumulate
from typing import Optional, Sequence

from autopar.cost.compute import DeviceRate, LayerCompute, layer_compute
from autopar.cost.efficiency import Efficiency
from autopar.profile.types import LayerStats
from autopar.spec.enums import Recompute
from autopar.techniques.expert import cost as expert_cost
from autopar.techniques.recompute import cost as recompute_cost
from autopar.techniques.tensor import cost as tensor_cost
from autopar.techniques.tensor.cost import CommFn
from autopar.util import run_lengths


@dataclass(frozen=True)
class LayerCosts:
    forward_s: float
    backward_s: float
    recompute_s: float
    tp_forward_s: float  # tensor-parallel communication, forward
    tp_backward_s: float
    params: float  # parameters held on this rank
    activation_bytes: float  # saved for backward, one micro-batch
    working_bytes: float  # extra while this layer's backward runs (full recompute)
    output_bytes: float  # sent to the next stage, one micro-batch
    ep_s: float = 0.0  # expert parallelism: all-to-all dispatch and the busiest rank's extra expert compute
    cp_s: float = 0.0  # context parallelism: the keys' and values' all-gather and its backward reduce-scatter
    expert_params: float = 0.0  # routed-expert parameters held on this rank (ep > 1: experts / ep of them)

    @property
    def time_s(self) -> float:
        return self.forward_s + self.backward_s + self.recompute_s + self.tp_forward_s + self.tp_backward_s + self.ep_s + self.cp_s


FIELDS = ("forward_s", "backward_s", "recompute_s", "tp_forward_s", "tp_backward_s", "params", "activation_bytes", "ep_s", "expert_params", "cp_s")


def layer_costs(stats: LayerStats, b: int, tp: int, sp: bool, recompute: Recompute, rate: DeviceRate,
                eff: Efficiency, all_reduce: CommFn, split_params: bool = True, tp_module_overhead_s: float = 0.0,
                ep: int = 1, all_to_all: Optional[CommFn] = None,
                base: Optional[tuple[LayerCompute, float, float]] = None) -> LayerCosts:
    """Costs of `stats` at micro-batch b on one of tp tensor-parallel ranks (and, with ep > 1,
    of ep expert-parallel ranks). all_reduce(bytes) prices one TP collective; with sequence
    parallelism it stands for the reduce-scatter + all-gather pair (same bytes);
    all_to_all(bytes) one exchange over the ep group. `base`: layer_base_costs() of the same
    arguments, which do not depend on the recompute mode (shared by the three modes' tables)."""
    c, tp_f, tp_b = base or layer_base_costs(stats, b, tp, sp, rate, eff, all_reduce, tp_module_overhead_s, ep)
    params = tensor_cost.params_per_rank(stats, tp) if split_params else stats.params
    experts, ep_s = float(stats.expert_params), 0.0
    if ep > 1 and stats.expert_params:  # experts are replicated over tp, split over ep
        experts = stats.expert_params / ep
        params -= stats.expert_params - experts
        ep_s = expert_cost.dispatch_s(stats.dispatch_bytes * b, all_to_all) + expert_cost.imbalance_s(
            stats.expert_flops, stats.forward_flops, c.forward_s + c.backward_s, eff.expert_imbalance)
    # Boundary tensors leave a stage split over the tp ranks: sharded already (sequence
    # parallel, column-split outputs) or by Megatron's scatter/gather optimisation
    # (Narayanan et al. 2021, Sec. 4.1: each rank sends 1/t, the next stage all-gathers).
    return LayerCosts(
        forward_s=c.forward_s,
        backward_s=c.backward_s,
        recompute_s=recompute_cost.recompute_s(recompute, stats, c.forward_s, tp_f, c.core_forward_s),
        tp_forward_s=tp_f,
        tp_backward_s=tp_b,
        params=params,
        activation_bytes=recompute_cost.layer_activation_bytes(stats, b, tp, sp, recompute),
        working_bytes=recompute_cost.layer_working_bytes(stats, b, tp, sp, recompute),
        output_bytes=stats.output_bytes * b / tp,
        ep_s=ep_s,
        expert_params=experts,
    )


def layer_base_costs(stats: LayerStats, b: int, tp: int, sp: bool, rate: DeviceRate, eff: Efficiency, all_reduce: CommFn,
                     tp_module_overhead_s: float = 0.0, ep: int = 1) -> tuple[LayerCompute, float, float]:
    """(compute, tensor-parallel forward s, backward s) of one layer: the part of
    layer_costs() every recompute mode shares."""
    return (layer_compute(stats, b, tp, sp, rate, eff, ep), *tensor_cost.tp_comm_s(stats, b, tp, all_reduce, tp_module_overhead_s))


class LayerTable:
    """Per-layer costs in model order, with prefix sums for range queries.

    Identical layers share one LayerCosts, so whole-model totals come from the runs
    (a GPT: 3 runs, not 98 layers); the prefix sums are built on first use only, as a
    search prices far fewer settings than it bounds."""

    def __init__(self, costs: Sequence[LayerCosts], runs: Optional[list[tuple[LayerCosts, int]]] = None):
        self.costs = list(costs)
        if runs is None:  # identical layers share one LayerCosts
            runs = run_lengths(self.costs, lambda a, b: a is b)
        self.cost_runs = runs
        self.runs = tuple((c.time_s, n) for c, n in runs)
        self.max_params = max((c.params for c in costs), default=0.0)
        self._working_runs, start = [], 0  # (first layer, end layer, working bytes) per run
        for c, n in runs:
            self._working_runs.append((start, start + n, c.working_bytes))
            start += n
        self.prefix = _Prefixes(self.costs)
        self._totals: dict[str, float] = {}
        self._unit_range: Optional[tuple] = None  # (units, slowest, fastest)
        self._unit_least: dict[str, tuple] = {}  # field -> (units, least over them)

    @cached_property
    def times(self) -> list[float]:
        return [c.time_s for c in self.costs]

    @cached_property
    def time(self) -> list[float]:
        return _prefix(self.times)

    def total(self, field: str) -> float:
        """Sum of `field` over every layer (from the runs; memoised)."""
        found = self._totals.get(field)
        if found is None:
            found = self._totals[field] = sum(getattr(c, field) * n for c, n in self.cost_runs)
        return found

    def unit_time_range(self, units: Sequence[tuple[int, int]]) -> tuple[float, float]:
        """(slowest, fastest) time of the layer ranges `units`: the profile's block units, one
        tuple per profile (pipeline/cost.py unit_bounds is memoised), so the last is kept."""
        if self._unit_range is None or self._unit_range[0] is not units:
            times = [self.range_time(a, e) for a, e in units]
            self._unit_range = (units, max(times), min(times))
        return self._unit_range[1], self._unit_range[2]

    def unit_least(self, field: str, units: Sequence[tuple[int, int]]) -> float:
        """Least sum of `field` over the layer ranges `units` (one tuple per profile, as in
        unit_time_range: the last is kept)."""
        found = self._unit_least.get(field)
        if found is None or found[0] is not units:
            p = self.prefix[field]
            found = self._unit_least[field] = (units, min(p[e] - p[a] for a, e in units))
        return found[1]

    def total_time_s(self) -> float:
        return sum(t * n for t, n in self.runs)

    def range_sum(self, field: str, start: int, end: int) -> float:
        p = self.prefix[field]
        return p[end] - p[start]

    def range_time(self, start: int, end: int) -> float:
        return self.time[end] - self.time[start]

    def max_working(self, start: int, end: int) -> float:
        """Largest working set among layers [start, end): one pass over the runs, not the layers."""
        return max((w for a, e, w in self._working_runs if a < end and e > start), default=0.0)


class _Prefixes(dict):
    """field -> prefix sums over the layers, computed when first read."""

    def __init__(self, costs: Sequence[LayerCosts]):
        super().__init__()
        self._costs = costs

    def __missing__(self, field: str) -> list[float]:
        found = self[field] = _prefix([getattr(c, field) for c in self._costs])
        return found


def _prefix(values: Sequence[float]) -> list[float]:
    return list(accumulate(values, initial=0.0))
