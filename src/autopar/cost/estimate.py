"""The step: time and memory of one training step of a strategy, with breakdowns.

    step = pipeline (m micro-batches through the slowest rank, plus the bubble)
         + exposed data-parallel synchronisation + optimizer step + exposed data loading

Ranks are numbered threads, then tp, then dp, then pp (innermost first, as in
Megatron-LM), which decides which groups stay inside a node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Optional

from autopar.cost import collectives as coll
from autopar.cost.compute import DeviceRate
from autopar.cost.convergence import steps_factor
from autopar.cost.data_parallel import ddp_sync, local_sgd_sync, zero3_traffic_s, zero12_sync
from autopar.cost.efficiency import DEFAULT, Efficiency
from autopar.cost.layers import LayerTable, layer_costs
from autopar.cost.memory import bytes_per_param, microbatches_in_flight, model_state_bytes
from autopar.cost.pipeline import layout_fast, layout_runs, schedule_time_s
from autopar.cost.validity import check_strategy
from autopar.validity import facts_from_profile
from autopar.profile.types import ModelProfile, is_mlp_layer
from autopar.spec.cluster import Cluster
from autopar.spec.enums import DataPartition, Optimizer, Precision, Recompute, Schedule, Sync
from autopar.spec.recipe import Recipe
from autopar.spec.strategy import Strategy

GB = 1e9
FRAMEWORK_RESERVE_BYTES = {True: 0.35 * GB, False: 1.5 * GB}  # CPU process (torch + Python); CUDA context + allocator slack
DEFAULT_STORAGE_BPS = 2 * GB  # per node, when the recipe gives no storage_GBps
HOST_TO_DEVICE_BPS = 20 * GB  # PCIe 4.0 x16 in practice, for input batches


@dataclass(frozen=True)
class Workload:
    """What the recipe asks, reduced to numbers the cost model uses."""

    global_batch: int
    optimizer: Optimizer
    precision: Precision
    steps: int
    samples: int
    sample_bytes: float
    storage_Bps: float
    tokens_per_sample: Optional[int]

    @classmethod
    def from_recipe(cls, recipe: Recipe, profile: ModelProfile) -> "Workload":
        seq = getattr(recipe.model, "seq_len", None)
        d = recipe.data
        return cls(
            global_batch=recipe.training.global_batch,
            optimizer=recipe.training.optimizer,
            precision=recipe.training.precision,
            steps=recipe.steps_to_train(),
            samples=d.samples,
            sample_bytes=float(d.sample_bytes or profile.sample_bytes),
            storage_Bps=(d.storage_GBps * GB) if d.storage_GBps else DEFAULT_STORAGE_BPS,
            tokens_per_sample=seq,
        )


@dataclass(frozen=True)
class Estimate:
    strategy: Strategy
    devices_used: int
    fits: bool
    reason: Optional[str]
    step_time_s: float
    time_breakdown_s: dict[str, float]
    memory_per_device_bytes: float
    memory_breakdown_bytes: dict[str, float]
    throughput_samples_s: float
    tokens_per_s: Optional[float]
    tflops_per_device: float
    mfu: float
    steps_factor: float
    time_to_train_s: float
    stages: Optional[tuple[int, ...]]
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy.to_dict(),
            "devices_used": self.devices_used,
            "fits": self.fits,
            "reason": self.reason,
            "predicted": {
                "step_time_s": self.step_time_s,
                "memory_per_device_bytes": self.memory_per_device_bytes,
                "throughput_samples_s": self.throughput_samples_s,
                "tokens_per_s": self.tokens_per_s,
                "tflops_per_device": self.tflops_per_device,
                "mfu": self.mfu,
                "steps_factor": self.steps_factor,
                "time_to_train_s": self.time_to_train_s,
                "stages": list(self.stages) if self.stages else None,
                "breakdown": {"time_s": self.time_breakdown_s, "memory_bytes": self.memory_breakdown_bytes},
            },
        }


@dataclass(frozen=True)
class _Topology:
    tp: coll.Placement
    dp: coll.Placement
    pp_crosses_nodes: bool
    used_per_node: int


class CostModel:
    """Estimates strategies for one (profile, workload, cluster); caches per-layer tables."""

    def __init__(self, profile: ModelProfile, work: Workload, cluster: Cluster, eff: Efficiency = DEFAULT):
        self.profile, self.work, self.cluster, self.eff = profile, work, cluster, eff
        self.stats = [l.stats for l in profile.layers]
        self.n_layers = len(self.stats)
        self.peak = cluster.device.peak_flops_for(work.precision)
        self.model_flops_per_sample = profile.forward_flops + profile.backward_flops
        self.param_bytes, self.grad_bytes, self.state_bytes = bytes_per_param(work.optimizer, work.precision)
        dev = cluster.device
        self.comm_overlap = dev.comm_overlap if dev.comm_overlap is not None else eff.comm_overlap
        self.facts = facts_from_profile(profile)  # what the validity rules read, computed once
        self._tables: dict[tuple, LayerTable] = {}
        self._layouts: dict[tuple, Optional[tuple[int, ...]]] = {}
        self._ranks: dict[tuple, _RankSet] = {}
        self._flights: dict[tuple, tuple[float, ...]] = {}
        self._layout_of: dict[tuple, Optional[tuple[int, ...]]] = {}
        self._memory_layouts: dict[tuple, Optional[tuple[int, ...]]] = {}

    @classmethod
    def for_recipe(cls, recipe: Recipe, cluster: Cluster, profile: Optional[ModelProfile] = None, eff: Efficiency = DEFAULT) -> "CostModel":
        from autopar.profile.profiler import profile_recipe

        profile = profile or profile_recipe(recipe)
        return cls(profile, Workload.from_recipe(recipe, profile), cluster, eff)

    def flops_per_sample(self, s: Strategy) -> float:
        """Model FLOPs (forward + backward) per sample the strategy executes: a subnetwork
        worker runs 1/n of its MLP layers."""
        if not s.subnet:
            return self.model_flops_per_sample
        mlp = sum(x.forward_flops + x.backward_flops for x in self.stats if is_mlp_layer(x))
        return self.model_flops_per_sample - mlp + mlp / s.dp

    # ----------------------------------------------------------- pieces

    def topology(self, s: Strategy) -> _Topology:
        dpn = self.cluster.devices_per_node
        used_per_node = min(dpn, s.devices)
        tp = coll.place(s.tp, s.threads, dpn, used_per_node)
        dp = coll.place(s.dp, s.threads * s.tp, dpn, used_per_node)
        return _Topology(tp, dp, s.threads * s.tp * s.dp >= dpn and s.pp > 1, used_per_node)

    def rate(self, s: Strategy, used_per_node: int) -> DeviceRate:
        dev = self.cluster.device
        flops = self.peak * (1 + (s.threads - 1) * dev.thread_efficiency)
        bw = dev.memory_bandwidth_Bps * s.threads
        overhead = dev.op_overhead_s
        if dev.shared_memory:  # the node's processes share one memory bus, caches and clocks
            processes = max(1, used_per_node // s.threads)
            bw = min(bw, self.cluster.node_bandwidth_Bps / processes)
            if processes > 1:
                flops *= dev.concurrency_efficiency
                overhead /= dev.concurrency_efficiency
        fusion = 1.0 if dev.shared_memory else self.eff.accelerator_fusion
        return DeviceRate(flops, bw, overhead, fusion, self.profile.dtype_bytes)

    def table(self, s: Strategy, b: int, topo: _Topology, rate: DeviceRate) -> LayerTable:
        subnet_split = s.dp if s.subnet else 1
        feature_split = s.dp if s.data_partition is DataPartition.FEATURES else 1
        key = (b, s.tp, s.sequence_parallel, s.recompute, rate, topo.tp, subnet_split, feature_split, topo.dp if feature_split > 1 else None)
        table = self._tables.get(key)
        if table is None:
            table = self._build_table(s, b, topo, rate, subnet_split)
            self._tables[key] = table
        return table

    def _build_table(self, s: Strategy, b: int, topo: _Topology, rate: DeviceRate, subnet_split: int) -> LayerTable:
        cluster, eff = self.cluster, self.eff
        by_stats: dict[int, Any] = {}
        costs = []
        for i, stats in enumerate(self.stats):
            feature_layer = s.data_partition is DataPartition.FEATURES and i == 0
            key = (id(stats), feature_layer)
            if key not in by_stats:
                if subnet_split > 1 and is_mlp_layer(stats):  # each worker trains 1/n of the hidden units
                    c = layer_costs(stats, b, subnet_split, False, s.recompute, rate, eff, lambda n: 0.0)
                elif feature_layer:  # each rank multiplies its slice of the features; partial sums all-reduced
                    c = _feature_layer_costs(stats, b, s, rate, eff, lambda n: coll.all_reduce_s(n, topo.dp, cluster, eff))
                else:
                    c = layer_costs(stats, b, s.tp, s.sequence_parallel, s.recompute, rate, eff,
                                    lambda n: coll.all_reduce_s(n, topo.tp, cluster, eff),
                                    tp_module_overhead_s=cluster.device.tp_module_overhead_s)
                by_stats[key] = c
            costs.append(by_stats[key])
        return LayerTable(costs)

    def layout(self, s: Strategy, table: LayerTable) -> Optional[tuple[int, ...]]:
        """Blocks of the `layers` stack per pipeline chunk (None without a pipeline):
        given by the strategy, else balanced by time with the embedding riding on the
        first block and the head on the last."""
        chunks = s.pp * s.virtual_stages
        if chunks == 1:
            return None
        if s.stages is not None:
            return s.stages
        direct = (id(table), chunks)
        found = self._layout_of.get(direct)
        if found is None:
            runs = _block_runs(table.times, self.profile.stack)
            ref = max(t for t, _ in runs) or 1.0
            key = (chunks, tuple((round(t / ref, 4), n) for t, n in runs))  # shared by tables of the same shape
            if key not in self._layouts:
                self._layouts[key] = layout_runs(runs, chunks)
            found = self._layout_of[direct] = self._layouts[key]
        return found

    # ---------------------------------------------------------- estimate

    def estimate(self, s: Strategy, check: bool = True) -> Estimate:
        if check:
            check_strategy(s, self.profile, self.work.global_batch, self.cluster, precision=self.work.precision, facts=self.facts)
        w = self.work
        features = s.data_partition is DataPartition.FEATURES
        local = w.global_batch if features else s.local_batch(w.global_batch)
        b = s.microbatch or local
        m = local // b
        topo = self.topology(s)
        rate = self.rate(s, topo.used_per_node)
        table = self.table(s, b, topo, rate)
        counts = self.layout(s, table)
        est = self._evaluate(s, table, counts, m, topo, rate)
        if not est.fits and s.pp > 1 and s.virtual_stages == 1 and s.stages is None and self._relayout_may_fit(s, table, counts, m, topo):
            # the time-balanced cut does not fit: cut again, balancing time under a memory cap
            lean = self._memory_layout(s, table, m)
            if lean is not None and lean != counts:
                other = self._evaluate(s, table, lean, m, topo, rate)
                est = other if other.fits else est
        return est

    def _evaluate(self, s: Strategy, table: LayerTable, counts, m: int, topo: _Topology, rate: DeviceRate) -> Estimate:
        rs = self.ranks(s, table, counts, topo)
        ranks, slow = rs.ranks, rs.slow
        pipe_s, bubble_s = schedule_time_s(slow.time_s, rs.time_sum, s.pp, m, s.virtual_stages, rs.chunk_max_s)
        breakdown = {
            "compute": m * slow.compute_s,
            "recompute": m * slow.recompute_s,
            "tp_comm": m * slow.tp_s,
            "pp_comm": m * slow.p2p_s,
            "bubble": bubble_s,
            "dp_comm": self._sync(s, slow, m, topo, rate),
            "optimizer": self._optimizer_s(s, rs.max_params, rate),
            "data": self._data_s(s, pipe_s),
        }
        step = sum(breakdown.values())
        return self._assemble(s, step, breakdown, self._memory(s, ranks, m, table), counts)

    def _relayout_may_fit(self, s: Strategy, table: LayerTable, counts, m: int, topo: _Topology) -> bool:
        """Moving layers between stages cannot bring the fullest stage below the average:
        skip the memory-aware cut when even the average stage overflows."""
        ranks = self.ranks(s, table, counts, topo).ranks
        z, dp, (p, g, k) = s.zero, s.dp, (self.param_bytes, self.grad_bytes, self.state_bytes)
        per_param = p / (dp if z >= 3 else 1) + g / (dp if z >= 2 else 1) + k / (dp if z >= 1 else 1)
        flights = self._in_flight(s, m)
        average = sum(r.params * per_param + r.activation_bytes * f for r, f in zip(ranks, flights)) / len(ranks)
        cap = self.cluster.device.memory_bytes * s.threads - FRAMEWORK_RESERVE_BYTES[self.cluster.device.shared_memory]
        return average <= cap

    def _memory_layout(self, s: Strategy, table: LayerTable, m: int) -> Optional[tuple[int, ...]]:
        """Blocks per stage minimising the slowest stage subject to each stage's memory
        (states + activations of the micro-batches it holds in flight) fitting the device."""
        key = (id(table), s.pp, s.zero, s.dp, s.threads, s.schedule, m)
        if key in self._memory_layouts:
            return self._memory_layouts[key]
        start, count = self.profile.stack
        n = self.n_layers
        costs = table.costs
        zero, dp = s.zero, s.dp
        p, g, k = self.param_bytes, self.grad_bytes, self.state_bytes
        per_param = p / (dp if zero >= 3 else 1) + g / (dp if zero >= 2 else 1) + k / (dp if zero >= 1 else 1)
        flights = self._in_flight(s, m)
        working = table.max_working(0, n)  # the largest layer's recompute working set bounds every stage's
        cap = self.cluster.device.memory_bytes * s.threads - FRAMEWORK_RESERVE_BYTES[self.cluster.device.shared_memory] - working
        params, acts = table.prefix["params"], table.prefix["activation_bytes"]

        def mem(i: int, a: int, e: int) -> float:  # blocks [a, e) of stage i; the ends fold in embedding and head
            lo, hi = (0 if a == 0 else start + a), (n if e == count else start + e)
            return per_param * (params[hi] - params[lo]) + flights[i] * (acts[hi] - acts[lo]) + 2 * costs[hi - 1].output_bytes

        times = [table.range_time(0 if j == 0 else start + j, n if j == count - 1 else start + j + 1) for j in range(count)]
        found = self._memory_layouts[key] = layout_fast(times, s.pp, mem, cap, rel_tol=1e-3)
        return found

    def ranks(self, s: Strategy, table: LayerTable, counts: tuple[int, ...], topo: _Topology) -> "_RankSet":
        """Per pipeline rank: one micro-batch's time by kind, parameters and activations (cached)."""
        key = (id(table), counts, s.pp, s.virtual_stages, topo.pp_crosses_nodes, topo.used_per_node, s.tp, s.sequence_parallel)
        found = self._ranks.get(key)
        if found is None:
            ranges = _rank_ranges(counts, s.pp, s.virtual_stages, self.profile.stack, self.n_layers)
            ranks = [self._rank(s, table, chunks, topo) for chunks in ranges]
            chunk_max = max(table.range_time(a, e) for chunks in ranges for a, e in chunks) if s.virtual_stages > 1 else 0.0
            found = _RankSet(ranks, max(ranks, key=lambda r: r.time_s), sum(r.time_s for r in ranks), max(r.params for r in ranks),
                             chunk_max)
            self._ranks[key] = found
        return found

    # ------------------------------------------------------------ helpers

    def _rank(self, s: Strategy, table: LayerTable, chunks: list[tuple[int, int]], topo: _Topology) -> "_Rank":
        rs = table.range_sum
        f = sum(rs("forward_s", a, e) + rs("backward_s", a, e) for a, e in chunks)
        bwd = sum(rs("backward_s", a, e) for a, e in chunks)
        rc = sum(rs("recompute_s", a, e) for a, e in chunks)
        tp = sum(rs("tp_forward_s", a, e) + rs("tp_backward_s", a, e) for a, e in chunks)
        p2p = 0.0
        for start, end in chunks if s.pp > 1 else ():  # activation to the next stage, its gradient back
            sends = (end < self.n_layers) + (start > 0)
            nbytes = table.costs[end - 1].output_bytes if end < self.n_layers else table.costs[start - 1].output_bytes
            p2p += sends * coll.p2p_s(nbytes, topo.pp_crosses_nodes, topo.used_per_node, self.cluster, self.eff)
            if s.tp > 1 and not s.sequence_parallel:  # re-assemble the scattered activation
                p2p += sends * coll.all_gather_s(nbytes * s.tp, topo.tp, self.cluster, self.eff)
        return _Rank(
            compute_s=f, recompute_s=rc, tp_s=tp, p2p_s=p2p, backward_s=bwd, time_s=f + rc + tp + p2p,
            params=sum(rs("params", a, e) for a, e in chunks),
            activation_bytes=sum(rs("activation_bytes", a, e) for a, e in chunks),
            working_bytes=max(table.max_working(a, e) for a, e in chunks),
            boundary_bytes=max(table.costs[e - 1].output_bytes for a, e in chunks) if s.pp > 1 else 0.0,
        )

    def _sync(self, s: Strategy, slow: "_Rank", m: int, topo: _Topology, rate: DeviceRate) -> float:
        if s.dp == 1 or s.data_partition is DataPartition.FEATURES:
            return 0.0
        cl, eff = self.cluster, self.eff
        grads = slow.params * self.grad_bytes
        if s.subnet:
            pair = sum(l.stats.params for l in self.profile.layers if is_mlp_layer(l.stats))
            return local_sgd_sync(pair * self.param_bytes / s.dp, topo.dp, s.sync_every, cl, eff).exposed_s
        if s.sync is Sync.ASYNC:
            return local_sgd_sync(slow.params * 4, topo.dp, s.sync_every, cl, eff).exposed_s
        overlap = self.comm_overlap
        window = slow.backward_s * overlap
        link = cl.intra_node if topo.dp.nodes == 1 else cl.inter_node
        if s.zero == 0:
            return ddp_sync(grads, topo.dp, window, cl, eff).exposed_s * link.ddp_factor
        if s.zero in (1, 2):  # ZeRO-1 runs as DDP + sharded optimizer, ZeRO-2 as FSDP2 (runtime/sharding.py)
            factor = link.ddp_factor if s.zero == 1 else link.fsdp_factor
            return zero12_sync(grads, slow.params * self.param_bytes, topo.dp, window, cl, eff).exposed_s * factor
        gathers = 3 if s.recompute is Recompute.FULL else 2
        traffic = zero3_traffic_s(slow.params * self.param_bytes, grads, gathers, m, topo.dp, cl, eff) * link.fsdp_factor
        busy = m * (slow.compute_s + slow.recompute_s + slow.tp_s) * overlap
        layer = slow.params / max(1, self.n_layers)  # the first gather and the last reduce-scatter cannot hide
        ends = coll.all_gather_s(layer * self.param_bytes, topo.dp, cl, eff) + coll.reduce_scatter_s(layer * self.grad_bytes, topo.dp, cl, eff)
        return max(0.0, traffic - busy) + ends

    def _optimizer_s(self, s: Strategy, params: float, rate: DeviceRate) -> float:
        shard = params / (s.dp if s.zero >= 1 else 1)
        # bytes per parameter: parameter read+write, gradient read, states read+write
        p, g, k = self.param_bytes, self.grad_bytes, self.state_bytes
        traffic = 2 * p + g + 2 * k if not self.work.precision.is_mixed else p + g + 2 * k
        return shard * traffic / (rate.bandwidth_Bps * self.eff.memory_bandwidth)

    def _data_s(self, s: Strategy, busy_s: float) -> float:
        w, cl = self.work, self.cluster
        nodes = max(1, -(-s.devices // cl.devices_per_node))
        per_node_step = w.global_batch * w.sample_bytes / nodes  # feature partitions still read whole samples per node
        shard = w.samples * w.sample_bytes / nodes
        read = per_node_step / w.storage_Bps if shard > cl.host_memory_bytes * 0.8 else 0.0
        copy = 0.0 if cl.device.shared_memory else per_node_step / min(cl.devices_per_node, s.devices) / HOST_TO_DEVICE_BPS
        return max(0.0, read + copy - busy_s)

    def _memory(self, s: Strategy, ranks: list["_Rank"], m: int, table: LayerTable) -> dict[str, float]:
        """The peak over pipeline ranks of states + activations in flight + buffers + reserve."""
        dp_shard = s.dp if s.data_partition is DataPartition.SAMPLES and not s.subnet and s.sync is Sync.SYNC else 1
        p, g, k = self.param_bytes, self.grad_bytes, self.state_bytes
        z = s.zero
        per_param = p / (dp_shard if z >= 3 else 1) + g / (dp_shard if z >= 2 else 1) + k / (dp_shard if z >= 1 else 1)
        flights = self._in_flight(s, m)
        best, best_r = -1.0, 0
        for r, rank in enumerate(ranks):
            total = rank.params * per_param + rank.activation_bytes * flights[r] + rank.working_bytes + 2 * rank.boundary_bytes
            if total > best:
                best, best_r = total, r
        rank = ranks[best_r]
        states = model_state_bytes(rank.params, self.work.optimizer, self.work.precision, z, dp_shard)
        buffers = 2 * rank.boundary_bytes
        if s.dp > 1 and z == 0 and s.sync is Sync.SYNC:
            buffers += 2 * 25e6  # DDP buckets in flight
        if z >= 3:  # a layer's gathered parameters, and the next one prefetched
            buffers += 2 * table.max_params * self.param_bytes
        inflight = flights[best_r]
        out = {"params": states.params, "grads": states.grads, "optimizer": states.optimizer,
               "activations": rank.activation_bytes * inflight + rank.working_bytes, "buffers": buffers,
               "reserve": FRAMEWORK_RESERVE_BYTES[self.cluster.device.shared_memory]}
        out["total"] = sum(out.values())
        return out

    def _in_flight(self, s: Strategy, m: int) -> tuple[float, ...]:
        key = (s.schedule, s.pp, m, s.virtual_stages)
        found = self._flights.get(key)
        if found is None:
            found = tuple(microbatches_in_flight(s.schedule.value, r, s.pp, m, s.virtual_stages) for r in range(s.pp))
            self._flights[key] = found
        return found

    def _assemble(self, s: Strategy, step: float, breakdown: dict[str, float], mem: dict[str, float], counts) -> Estimate:
        w, dev = self.work, self.cluster.device
        capacity = dev.memory_bytes * s.threads
        fits = mem["total"] <= capacity
        reason = None if fits else f"needs {mem['total'] / GB:.3g} GB per device > {capacity / GB:.3g} GB"
        flops = self.flops_per_sample(s) * w.global_batch
        tflops = flops / step / s.devices if step > 0 else 0.0
        factor = steps_factor(s.sync is Sync.ASYNC and s.dp > 1, s.sync_every,
                              s.threads if s.sync is Sync.ASYNC else 1, s.dp if s.subnet else 1)
        return Estimate(
            strategy=s,
            devices_used=s.devices,
            fits=fits,
            reason=reason,
            step_time_s=step,
            time_breakdown_s=breakdown,
            memory_per_device_bytes=mem["total"],
            memory_breakdown_bytes={k: v for k, v in mem.items() if k != "total"},
            throughput_samples_s=w.global_batch / step if step > 0 else math.inf,
            tokens_per_s=w.global_batch * w.tokens_per_sample / step if w.tokens_per_sample and step > 0 else None,
            tflops_per_device=tflops / 1e12,
            mfu=tflops / (self.peak / s.threads * s.threads) if self.peak else 0.0,
            steps_factor=factor,
            time_to_train_s=w.steps * factor * step,
            stages=counts,
        )


@dataclass(frozen=True)
class _Rank:
    compute_s: float  # forward + backward compute of one micro-batch
    recompute_s: float
    tp_s: float
    p2p_s: float
    backward_s: float
    params: float
    activation_bytes: float  # one micro-batch, all chunks of the rank
    working_bytes: float
    boundary_bytes: float
    time_s: float  # one micro-batch through the rank: compute + recompute + tp + p2p


@dataclass(frozen=True)
class _RankSet:
    ranks: list[_Rank]
    slow: _Rank  # the rank that sets the pipeline's pace
    time_sum: float
    max_params: float
    chunk_max_s: float = 0.0  # slowest chunk's compute (interleaved schedules)


def _rank_ranges(counts: Optional[tuple[int, ...]], pp: int, virtual: int, stack: Optional[tuple[int, int]],
                 n_layers: int) -> list[list[tuple[int, int]]]:
    """Layer ranges [start, end) of each pipeline rank; rank r holds chunks r, r + pp, ...
    `counts` are blocks per chunk; layers before the stack join the first chunk, after it the last."""
    if counts is None:
        return [[(0, n_layers)]]
    offset = stack[0] if stack else 0
    bounds, start = [], 0
    for c in counts:
        bounds.append((start + offset, start + offset + c))
        start += c
    bounds[0] = (0, bounds[0][1])
    bounds[-1] = (bounds[-1][0], n_layers)
    return [[bounds[r + pp * k] for k in range(virtual)] for r in range(pp)]


def _block_runs(times: list[float], stack: Optional[tuple[int, int]]) -> list[tuple[float, int]]:
    """Per-block times as runs of equal values, the layers around the stack folded into
    its first and last block."""
    start, count = stack if stack else (0, len(times))
    blocks = list(times[start:start + count])
    blocks[0] += sum(times[:start])
    blocks[-1] += sum(times[start + count:])
    runs: list[list] = []
    for t in blocks:
        if runs and runs[-1][0] == t:
            runs[-1][1] += 1
        else:
            runs.append([t, 1])
    return [(t, n) for t, n in runs]


def _feature_layer_costs(stats, b, s, rate, eff, all_reduce):
    """The input Linear with its features split over dp ranks: compute and weights / dp,
    one all-reduce of the partial pre-activations forward, no input gradient."""
    from dataclasses import replace

    from autopar.cost.layers import layer_costs as costs_of

    c = costs_of(stats, b, s.dp, False, s.recompute, rate, eff, lambda n: 0.0, split_params=False)
    replicated_input = stats.input_bytes * b * (1 - 1 / s.dp)  # the Linear saves x: each rank keeps its columns
    return replace(c, params=stats.params / s.dp, tp_forward_s=all_reduce(stats.output_bytes * b),
                   activation_bytes=max(0.0, c.activation_bytes - replicated_input))


def estimate(recipe: Recipe, cluster: Cluster, strategy: Strategy, profile: Optional[ModelProfile] = None) -> Estimate:
    """One-call API: profile the recipe's model (unless given) and estimate the strategy."""
    return CostModel.for_recipe(recipe, cluster, profile).estimate(strategy)
