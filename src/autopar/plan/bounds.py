"""Floors: times and memory that no strategy of a search node can go below.

A node is a structure (dp, tp, pp, threads, sync, partition, subnet) with a micro-batch
size b, so m = local batch / b micro-batches per step. For every knob setting left
(schedule, chunks per rank v, sequence parallel, recompute, ZeRO stage, averaging
period) the cost model's step (cost/model.py) is a sum of non-negative terms,

    step = m t_max + bubble + dp_comm + optimizer + data,

t_max the slowest pipeline rank's time for one micro-batch. Let T be the whole model's
forward + backward + tensor-parallel time for one micro-batch on one tp rank without
recomputation (recomputation only adds time), and X = 2 (pp v - 1) p2p_min: each of the
pp v - 1 chunk boundaries sends an activation forward and a gradient back, each at
least the smallest boundary tensor's send. Then

    t_max >= (T + X) / pp                                  the slowest rank >= the average
    1F1B, GPipe: (m - 1) t_max + t_sum >= (T + X)(m - 1 + pp) / pp        (t_sum >= T + X)
    interleaved: m t_max + (pp - 1) max(t_max / v, chunk) >= (T + X)(m + (pp - 1) / v) / pp
    ZB-V, DualPipeV: m t_max (ZB-V's bubble, pipeline_cost.zbv_bubble_s, may be zero)
    zero bubble: the same bubbles times k, the slowest rank's forward share of its compute,
               k >= kappa = min over layers of forward / (forward + backward) (a ratio of
               sums is at least the least ratio); with one chunk
               m t_max + k (t_sum - t_max) = (m - k) t_max + k t_sum >= (m - kappa) t_max + kappa (T + X)
    optimizer >= its value for the average rank's parameters (it is linear in them; with
               offload, the host step, also linear)
    offload >= the average rank's exposed PCIe copies (convex, as dp_comm)
    dp_comm >= the exposed synchronisation of the average rank: the cost model takes the
               most any rank exposes, a convex function of the rank's parameters and
               times once the one-bucket minimum is dropped (cost/model.py rank_sync_s),
               so by Jensen's inequality max >= mean >= value at the mean
    data >= 0.

Memory: the peak rank holds at least any weighted average over ranks of its states and
activations in flight; uniform weights and weights 1 / f_r give

    bytes >= max((P s_z + A_rc f_min) / pp,  A_rc / sum_r (1 / f_r),  v (p s_z + a_rc f_0)) + B_z + reserve,

P the parameters of one tp rank over all layers, s_z the device state bytes per
parameter of sharding z (ZeRO stage, HSDP shard group; 0 with offload), A_rc every layer's saved activations of one micro-batch under recompute
mode rc, B_z the buffers every rank holds under z (DDP buckets, ZeRO-3's gathered
layers: cost/model.py shared_buffer_bytes), f_r the micro-batches rank r holds (1F1B: min(pp - r, m), interleaved at least
that, GPipe m), f_min the fewest. The third term is the first rank alone: it holds v
chunks of at least one block unit each (pp v <= blocks: techniques/pipeline/rules.py),
each unit at least the least parameters p and activations a_rc of any unit, and f_0
micro-batches in flight (interleaved: pp (1 + (pp - 1) / (pp v))); v f_0 grows with v, so
the value at a schedule's fewest chunks is a floor for all of them. P and A_rc come from the layer table at one sample
(every byte term is b times its value there; A_rc is taken 1e-12 lower so the product's
rounding never lifts it above the table at b), so a memory floor needs no table at b.

Where the cost model's layout is fixed (chunks > 1 or no pipeline: it never cuts those
again under a memory cap), excess_bytes() reads the exact memory instead, from the
ranks' holdings alone (cost/model.py held), before a setting is priced: the first rank
first (most micro-batches in flight), then every rank.

Every floor is a lower bound of the same cost model with no tolerance in
it beyond that 1e-12, so a node whose floor is above the plans kept cannot hold one of
them: pruning by floors returns the model's optimum over the whole space
(tests/test_planner_oracle.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from autopar.cost import collectives as coll
from autopar.cost.layers import LayerTable
from autopar.cost.model import CostModel, Rank, Topology
from autopar.spec.enums import Recompute, Schedule
from autopar.spec.strategy import Strategy
from autopar.techniques.data.space import Sharding
from autopar.techniques.pipeline import cost as pipeline_cost


@dataclass(frozen=True)
class _Totals:
    """Whole-model sums of one layer table (one micro-batch on one tp rank)."""

    compute_s: float  # forward + backward + tensor-parallel, no recomputation (T)
    recompute_s: float
    p2p_min_s: float  # the cheapest boundary send
    unit_max_s: float  # the slowest and fastest block unit (a block and the layers riding on it)
    unit_min_s: float
    average: Rank  # the average pipeline rank, for the synchronisation floor
    kappa: float  # least forward share of a layer's compute (zero-bubble floors)


class NodeFloors:
    """One node's floors, from the cost model's layer tables (cached per setting)."""

    def __init__(self, model: CostModel, c: dict, b: int, m: int, periods: Sequence[int]):
        self.model, self.m, self.pp, self.b = model, m, c["pp"], b
        self.base = Strategy(dp=c["dp"], tp=c["tp"], pp=c["pp"], threads=c["threads"], sync=c["sync"],
                             data_partition=c["data_partition"], subnet=c["subnet"], ep=c.get("ep", 1), cp=c.get("cp", 1),
                             microbatch=b if m > 1 else None)
        self.periods = tuple(periods)
        self.topo = model.topology(self.base)
        self.rate = model.rate(self.base, self.topo.used_per_node)
        self.capacity_bytes = model.capacity_bytes(self.base)
        self.devices = self.base.devices
        self.steps = model.work.steps
        self.steps_factor_min = min(model.steps_factor(self.base if h == self.base.sync_every else self.base.evolve(sync_every=h))
                                    for h in self.periods)
        self._tables: dict[tuple[bool, Recompute], LayerTable] = {}
        self._sums: dict[tuple[bool, Recompute], _Totals] = {}
        self._least_acts: dict[tuple, float] = {}
        self._sync: dict[tuple, float] = {}
        self._rest: dict[tuple, float] = {}
        self._held: dict[tuple, tuple] = {}  # (sp, rc, chunks, V-shaped, ranks) -> the cost model's table and per-rank holdings
        self._optimizer: dict[Sharding, float] = {}
        self._shardings: dict[Sharding, tuple[Strategy, Topology]] = {}
        self._state_bytes: dict[tuple[Sharding, bool], tuple[float, float]] = {}
        self._flight: dict[tuple[Schedule, int], tuple] = {}
        self._terms: dict[tuple[bool, Recompute], tuple[float, float, float, float]] = {}
        self._unit: dict[tuple[bool, Recompute], LayerTable] = {}
        self._bytes: dict[tuple, float] = {}

    def _table(self, sp: bool, rc: Recompute) -> LayerTable:
        key = (sp, rc)
        table = self._tables.get(key)
        if table is None:
            s = self.base.evolve(sequence_parallel=sp, recompute=rc)
            table = self._tables[key] = self.model.table(s, self.b, self.topo, self.rate)
        return table

    def _per_sample(self, sp: bool, rc: Recompute) -> LayerTable:
        """The layer table at one sample per micro-batch: parameters do not depend on b and
        every byte term is b times its value here (cost/layers.py: each is a per-sample size
        times b), so memory floors need no table at b. One table per (tp, sp, rc) setting,
        shared by every node."""
        key = (sp, rc)
        table = self._unit.get(key)
        if table is None:
            s = self.base.evolve(sequence_parallel=sp, recompute=rc, microbatch=None)
            table = self._unit[key] = self.model.table(s, 1, self.topo, self.rate)
        return table

    def _activation_bytes(self, sp: bool, rc: Recompute) -> float:
        """Every layer's saved activations of one micro-batch: b times one sample's, less a
        relative 1e-12 so the product's rounding never lifts it above the table at b."""
        return self.b * self._per_sample(sp, rc).total("activation_bytes") * (1 - 1e-12)

    def _totals(self, sp: bool, rc: Recompute) -> _Totals:
        key = (sp, rc)
        if key not in self._sums:
            table = self._table(sp, rc)
            total, costs = table.total, [c for c, _ in table.cost_runs]
            n = len(table.costs)
            recompute = total("recompute_s")
            smallest = min(x.output_bytes for x in costs)
            p2p = coll.p2p_s(smallest, self.topo.pp_crosses_nodes, self.topo.used_per_node, self.model.cluster, self.model.eff)
            units = self.model.profile.cuts
            if units and self.pp > 1:
                unit_max, unit_min = table.unit_time_range(pipeline_cost.unit_bounds(units, n))
            else:
                unit_max = unit_min = table.total_time_s()
            pp = self.pp
            average = Rank(compute_s=(total("forward_s") + total("backward_s")) / pp, recompute_s=recompute / pp,
                           tp_s=(total("tp_forward_s") + total("tp_backward_s")) / pp, p2p_s=0.0,
                           backward_s=total("backward_s") / pp, params=total("params") / pp,
                           activation_bytes=total("activation_bytes") / pp, working_bytes=0.0, boundary_bytes=0.0,
                           expert_params=total("expert_params") / pp if self.base.ep > 1 else 0.0)
            shares = [x.forward_s / (x.forward_s + x.backward_s) for x in costs if x.forward_s + x.backward_s > 0]
            self._sums[key] = _Totals(table.total_time_s() - recompute, recompute, p2p, unit_max, unit_min, average,
                                      min(shares, default=1.0))
        return self._sums[key]

    def pipe_s(self, sp: bool, schedule: Schedule, v: int, rc: Recompute = Recompute.NONE) -> float:
        """Floor of m t_max + bubble for one (sequence parallel, schedule, chunks, recompute);
        with rc=none a floor for every recompute mode (recomputation only adds time)."""
        t = self._totals(sp, rc)
        T, unit_max = t.compute_s + t.recompute_s, t.unit_max_s
        if self.pp == 1:
            return self.m * T
        total = T + 2 * (self.pp * v - 1) * t.p2p_min_s
        t_max = max(total / self.pp, unit_max)  # a rank holds the largest block unit
        if schedule.v_shaped:  # ZB-V's bubble (pipeline_cost.zbv_bubble_s) may be zero; DualPipeV's is >= 0
            return self.m * t_max
        k = t.kappa if schedule is Schedule.ZERO_BUBBLE else 1.0
        if v > 1:
            return self.m * t_max + k * (self.pp - 1) * max(t_max / v, unit_max)
        return (self.m - k) * t_max + k * total

    def per_sample_pipe_s(self, sp: bool) -> float:
        """m T / pp: the compute of the samples a rank must process, nothing else."""
        return self.m * self._totals(sp, Recompute.NONE).compute_s / self.pp

    def any_pipe_s(self, sp: bool, pairs: Sequence[tuple[Schedule, int]] = (), rc: Recompute = Recompute.NONE) -> float:
        """Floor of pipe_s over every schedule and chunk count in `pairs` at one recompute mode
        (none: a floor for every mode): m max(T / pp, U) plus, over the other pp - 1 ranks
        (1F1B, GPipe) or chunks (interleaved), at least a unit each (zero bubble: kappa of
        one; ZB-V: nothing)."""
        t = self._totals(sp, rc)
        T = t.compute_s + t.recompute_s
        if self.pp == 1:
            return self.m * T
        bubble = 0.0 if any(sched.v_shaped for sched, _ in pairs) else t.kappa * (self.pp - 1) * t.unit_min_s
        return self.m * max(T / self.pp, t.unit_max_s) + bubble

    def rest_s(self, sp: bool, rc: Recompute, zero: Sharding) -> float:
        """Floor of synchronisation + offload copies + optimizer step for one (sp, recompute, sharding)."""
        key = (sp, rc, zero)
        found = self._rest.get(key)
        if found is None:
            found = self._rest[key] = self.optimizer_s(sp, rc, zero) + self.sync_s(sp, rc, zero)
        return found

    def optimizer_s(self, sp: bool, rc: Recompute, zero: Sharding) -> float:
        """The optimizer step at the average rank's parameters (the same for every sp, rc)."""
        if zero not in self._optimizer:
            s, topo = self._sharded(zero)
            self._optimizer[zero] = self.model.optimizer_s(s, self._per_sample(sp, rc).total("params") / self.pp, self.rate, topo)
        return self._optimizer[zero]

    def _sharded(self, zero: Sharding) -> tuple[Strategy, Topology]:
        """The node's strategy with one sharding, and its topology (the same for every sp, rc)."""
        found = self._shardings.get(zero)
        if found is None:
            s = self.base.evolve(**zero.fields())
            found = self._shardings[zero] = (s, self.model.topology(s))
        return found

    def sync_s(self, sp: bool, rc: Recompute, zero: Sharding) -> float:
        """Exposed synchronisation (and offload copies) of the average rank, at the longest
        averaging period."""
        key = (sp, rc, zero)
        if key not in self._sync:
            sharded, topo = self._sharded(zero)
            s = sharded.evolve(sequence_parallel=sp, recompute=rc, sync_every=max(self.periods))
            average = self._totals(sp, rc).average
            offload = self.model.rank_offload_s(s, average, self.m) if s.offload else 0.0
            self._sync[key] = self.model.rank_sync_s(s, average, self.m, topo, last_bucket_waits=False) + offload
        return self._sync[key]

    def bytes(self, sp: bool, schedule: Schedule, rc: Recompute, zero: Sharding, v: int = 1) -> float:
        """Memory floor of the peak rank for one setting with v chunks per rank: the largest of
        the average rank (states + activations, f_min micro-batches each), the activations
        alone weighted by 1 / flights (max_r x_r >= sum_r w_r x_r for weights w_r >= 0
        summing to one; with w_r ~ 1 / f_r the sum is A / sum_r (1 / f_r), whatever the
        layout), and the first rank's v chunks of at least one block unit each, at its
        flights f_0 (the most of any rank). A floor for every v' >= v of the schedule."""
        key = (sp, schedule, rc, zero, v)
        found = self._bytes.get(key)
        if found is None:
            found = self._bytes[key] = self._floor_bytes(self._memory_terms(sp, rc), self._states(zero),
                                                         self._flights(schedule, v))
        return found

    def fitting(self, sp: bool, rc: Recompute, pairs: Sequence[tuple[Schedule, int]], zeros: Sequence[Sharding]) -> list[Sharding]:
        """The shardings of `zeros` whose bytes() fits at one (schedule, chunks) of `pairs` at
        least: bytes() over the product, its terms read once."""
        terms, cap, floor = self._memory_terms(sp, rc), self.capacity_bytes, self._floor_bytes
        flights = [self._flights(sched, v) for sched, v in pairs]
        return [z for z in zeros for states in (self._states(z),) if any(floor(terms, states, fl) <= cap for fl in flights)]

    def _floor_bytes(self, terms: tuple[float, float, float, float], states: tuple[float, float],
                     flights: tuple[float, float, float]) -> float:
        """max((P s_z + A f_min) / pp, A / sum_r (1 / f_r), v (p s_z + a f_0)) + B_z + reserve."""
        params, acts, unit_params, unit_acts = terms
        per_param, shared = states
        f_min, inverse_sum, v_first = flights
        return max((params * per_param + acts * f_min) / self.pp, acts / inverse_sum,
                   unit_params * per_param * v_first[0] + unit_acts * v_first[1]) + shared + self.model.reserve_bytes

    def _memory_terms(self, sp: bool, rc: Recompute) -> tuple[float, float, float, float]:
        """(P, A_rc, p, a_rc): every layer's parameters and saved activations of one micro-batch,
        and the least of any block unit (0 without a pipeline)."""
        key = (sp, rc)
        found = self._terms.get(key)
        if found is None:
            unit = self._per_sample(sp, rc)
            unit_params = unit_acts = 0.0
            if self.pp > 1 and self.model.profile.cuts:
                units = pipeline_cost.unit_bounds(self.model.profile.cuts, len(unit.costs))
                unit_params = unit.unit_least("params", units)
                unit_acts = self.b * unit.unit_least("activation_bytes", units) * (1 - 1e-12)
            found = self._terms[key] = (unit.total("params"), self._activation_bytes(sp, rc), unit_params, unit_acts)
        return found

    def _states(self, zero: Sharding, any_microbatch: bool = False) -> tuple[float, float]:
        """(device state bytes per parameter, buffers every rank holds) of one sharding; the
        buffers' largest layer is the same for every sp and recompute mode. `any_microbatch`:
        the least over micro-batch sizes, i.e. without accumulation (ZeRO-2 accumulating keeps
        whole gradients: techniques/data/cost.py model_state_bytes)."""
        key = (zero, any_microbatch)
        found = self._state_bytes.get(key)
        if found is None:
            s = self._sharded(zero)[0]
            if any_microbatch:
                s = s.evolve(microbatch=None)
            max_layer_params = self._per_sample(False, Recompute.NONE).max_params
            found = self._state_bytes[key] = (self.model.state_bytes_per_param(s), self.model.shared_buffer_bytes(s, max_layer_params))
        return found

    def excess_bytes(self, sp: bool, schedule: Schedule, v: int, rc: Recompute, zero: Sharding) -> float:
        """How far one setting's memory floor exceeds what the node has (> 0: it cannot fit):
        the device floor of bytes(); with chunks > 1 or no pipeline, whose layout the cost
        model never cuts again under a memory cap, the exact device and host bytes."""
        floor = self.bytes(sp, schedule, rc, zero, v) - self.capacity_bytes
        if floor > 0 or (self.pp > 1 and v == 1):
            return floor
        s = self.base.evolve(sequence_parallel=sp, recompute=rc, schedule=schedule, virtual_stages=v, **zero.fields())
        # the first rank alone first: it holds the most micro-batches in flight (and the
        # embedding), so it is where most settings overflow, and the peak is at least it
        for ranks in (1, None):
            key = (sp, rc, v, schedule.v_shaped, ranks)  # ZB-V's layout is not the looped one of the same v
            if key not in self._held:
                self._held[key] = self.model.held(s, ranks)
            device, host = self.model.held_bytes(s, *self._held[key])
            over = max(device - self.capacity_bytes, host - self.model.host_capacity_bytes)
            if over > 0 or self.pp == 1:
                return over
        return over

    def _flights(self, schedule: Schedule, v: int = 1) -> tuple[float, float, tuple[float, float]]:
        """(fewest micro-batches a rank holds, sum over ranks of 1 / micro-batches held,
        (v, v f_0)): the interleaved ranks' extra share is taken at its least (none) in the
        first two, the first rank's at v chunks in the third."""
        key = (schedule, v)
        found = self._flight.get(key)
        if found is None:
            kind = Schedule.ONE_F_ONE_B if schedule is Schedule.INTERLEAVED else schedule  # ZB-V: its own (pp on every rank)
            f_min, inverse_sum = pipeline_cost.flight_sums(kind, self.pp, self.m)
            f_first = pipeline_cost.microbatches_in_flight(schedule, 0, self.pp, self.m, v)
            found = self._flight[key] = (f_min, inverse_sum, (float(v), v * f_first) if self.pp > 1 else (0.0, 0.0))
        return found

    def least_bytes(self, sps: Sequence[bool], schedule: Schedule, rcs: Sequence[Recompute], zeros: Sequence[Sharding],
                    any_microbatch: bool = False) -> float:
        """min of bytes() over the settings: bytes() grows with the activations and the state
        bytes per parameter (the parameters do not depend on sp or rc), so it is its value at
        the least of each. `any_microbatch` (this node's b the smallest of a structure): a floor
        for every micro-batch size, the states taken without accumulation."""
        key = (tuple(sps), tuple(rcs))
        acts = self._least_acts.get(key)
        if acts is None:  # one sample's tables alone: no table at b is built for this
            acts = self._least_acts[key] = min(self._activation_bytes(sp, rc) for sp in sps for rc in rcs)
        params = self._per_sample(sps[0], rcs[0]).total("params")
        states = [self._states(z, any_microbatch) for z in zeros]
        f_min, inverse_sum, _ = self._flights(schedule)
        return min(max((params * spp + acts * f_min) / self.pp, acts / inverse_sum) + shared for spp, shared in states) \
            + self.model.reserve_bytes
