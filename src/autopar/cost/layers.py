"""Per-layer costs of one micro-batch on one rank, tabulated with prefix sums.

A `LayerTable` holds, for one (micro-batch, tensor-parallel degree, sequence
parallel, recompute) setting, every layer's forward/backward time, its
tensor-parallel communication, recompute time, parameters and activation bytes,
as prefix sums: the cost of any contiguous range of layers (a pipeline stage) is
one subtraction. Identical layers share one computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import Callable, Sequence

from autopar.cost.compute import DeviceRate, layer_compute
from autopar.cost.efficiency import Efficiency
from autopar.cost.memory import layer_activation_bytes, layer_working_bytes
from autopar.profile.types import LayerStats
from autopar.spec.enums import Recompute

CommFn = Callable[[float], float]  # bytes -> seconds for one collective of the TP group


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

    @property
    def time_s(self) -> float:
        return self.forward_s + self.backward_s + self.recompute_s + self.tp_forward_s + self.tp_backward_s


FIELDS = ("forward_s", "backward_s", "recompute_s", "tp_forward_s", "tp_backward_s", "params", "activation_bytes")


def layer_costs(stats: LayerStats, b: int, tp: int, sp: bool, recompute: Recompute, rate: DeviceRate,
                eff: Efficiency, all_reduce: CommFn, split_params: bool = True, tp_module_overhead_s: float = 0.0) -> LayerCosts:
    """Costs of `stats` at micro-batch b. all_reduce(bytes) prices one TP collective;
    with sequence parallelism it stands for the reduce-scatter + all-gather pair (same bytes)."""
    c = layer_compute(stats, b, tp, sp, rate, eff)
    tp_f = tp_b = 0.0
    if tp > 1:
        n_f, n_b = stats.tp_fwd_allreduces, stats.tp_bwd_allreduces
        tp_f = n_f * all_reduce(stats.tp_fwd_allreduce_bytes * b / n_f) if n_f else 0.0
        tp_b = n_b * all_reduce(stats.tp_bwd_allreduce_bytes * b / n_b) if n_b else 0.0
        host = len(stats.tp_styles) * tp_module_overhead_s / 3  # forward ~1/3, backward ~2/3 of the dispatch work
        tp_f, tp_b = tp_f + host, tp_b + 2 * host
    if recompute is Recompute.FULL:
        recompute_s = c.forward_s + tp_f  # the whole forward again, its all-reduces included
    elif recompute is Recompute.SELECTIVE and stats.has_core:
        recompute_s = c.core_forward_s
    else:
        recompute_s = 0.0
    params = stats.tp_params / tp + (stats.params - stats.tp_params) if split_params else stats.params
    # Boundary tensors leave a stage split over the tp ranks: sharded already (sequence
    # parallel, column-split outputs) or by Megatron's scatter/gather optimisation
    # (Narayanan et al. 2021, Sec. 4.1: each rank sends 1/t, the next stage all-gathers).
    out_split = tp
    return LayerCosts(
        forward_s=c.forward_s,
        backward_s=c.backward_s,
        recompute_s=recompute_s,
        tp_forward_s=tp_f,
        tp_backward_s=tp_b,
        params=params,
        activation_bytes=layer_activation_bytes(stats, b, tp, sp, recompute),
        working_bytes=layer_working_bytes(stats, b, tp, sp) if recompute is Recompute.FULL else 0.0,
        output_bytes=stats.output_bytes * b / out_split,
    )


class LayerTable:
    """Per-layer costs in model order, with prefix sums for range queries."""

    def __init__(self, costs: Sequence[LayerCosts]):
        self.costs = list(costs)
        self.times = [c.time_s for c in costs]
        self.time = _prefix(self.times)
        self.prefix = {f: _prefix([getattr(c, f) for c in costs]) for f in FIELDS}
        self.max_params = max((c.params for c in costs), default=0.0)
        # runs of identical layers (as (cost, count)), for fast stage layouts
        runs: list[list] = []
        for c in self.costs:
            if runs and runs[-1][0] is c:
                runs[-1][1] += 1
            else:
                runs.append([c, 1])
        self.runs = tuple((c.time_s, n) for c, n in runs)
        self._working_runs, start = [], 0  # (first layer, end layer, working bytes) per run
        for c, n in runs:
            self._working_runs.append((start, start + n, c.working_bytes))
            start += n

    def range_sum(self, field: str, start: int, end: int) -> float:
        p = self.prefix[field]
        return p[end] - p[start]

    def range_time(self, start: int, end: int) -> float:
        return self.time[end] - self.time[start]

    def max_working(self, start: int, end: int) -> float:
        """Largest working set among layers [start, end): one pass over the runs, not the layers."""
        return max((w for a, e, w in self._working_runs if a < end and e > start), default=0.0)


def _prefix(values: Sequence[float]) -> list[float]:
    return list(accumulate(values, initial=0.0))
