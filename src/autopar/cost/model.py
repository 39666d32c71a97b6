"""The step: time and memory of one training step of a strategy, from each technique's terms.

    step = m micro-batches through the slowest pipeline rank     (compute, recompute, tp, p2p)
         + the pipeline bubble                                   (techniques/pipeline/cost.py)
         + exposed data-parallel synchronisation                 (data, local_sgd, subnet cost.py)
         + exposed host <-> device copies                        (offload/cost.py)
         + the optimizer step                                    (data/cost.py: ZeRO shards; offload: on the host)
         + exposed data loading

    memory = max over pipeline ranks of  model states (ZeRO)  + activations in flight
                                       + working set + buffers + framework reserve
    (offload: the states live in host memory, which must hold every rank's shard of a node)

`CostModel` caches the per-layer tables (cost/layers.py) of one (profile, workload,
cluster) so the planner's thousands of estimates cost microseconds each. Ranks are
numbered threads, then tp, then dp, then pp (innermost first, as in Megatron-LM), which
decides which groups stay inside a node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

from autopar.cost import collectives as coll
from autopar.cost.compute import DeviceRate
from autopar.cost.efficiency import DEFAULT, Efficiency
from autopar.cost.estimate import GB, Estimate, Workload
from autopar.cost.layers import LayerCosts, LayerTable, layer_base_costs, layer_costs
from autopar.profile.profiler import profile_recipe
from autopar.profile.types import LayerStats, ModelProfile, is_mlp_layer
from autopar.spec.cluster import Cluster
from autopar.spec.enums import DataPartition, Recompute, Schedule, Sync
from autopar.spec.recipe import Recipe
from autopar.spec.strategy import Strategy
from autopar.techniques import check_strategy
from autopar.techniques.context import cost as context_cost
from autopar.techniques.data import cost as data_cost
from autopar.techniques.features import cost as features_cost
from autopar.techniques.local_sgd import cost as local_sgd_cost
from autopar.techniques.offload import cost as offload_cost
from autopar.techniques.pipeline import cost as pipeline_cost
from autopar.techniques.subnet import cost as subnet_cost
from autopar.techniques.threads import cost as threads_cost
from autopar.util import run_lengths

FRAMEWORK_RESERVE_BYTES = {True: 0.35 * GB, False: 1.5 * GB}  # CPU process (torch + Python); CUDA context + allocator slack
HOST_MEMORY_USABLE = 0.8  # of a node's host memory, for offloaded states (the OS, loaders and pinned buffers take the rest)


@dataclass(frozen=True)
class Topology:
    tp: coll.Placement
    dp: coll.Placement
    pp_crosses_nodes: bool
    used_per_node: int
    shard: Optional[coll.Placement] = None  # HSDP: the shard group and the replicas' group
    replicate: Optional[coll.Placement] = None
    ep: Optional[coll.Placement] = None  # expert parallelism: the ep group and the ranks holding the same experts
    expert_replicas: Optional[coll.Placement] = None
    cp: Optional[coll.Placement] = None  # context parallelism: the ranks holding pieces of the same samples


@dataclass(frozen=True)
class Rank:
    """One pipeline rank: one micro-batch's time by kind, and what it holds."""

    compute_s: float  # forward + backward compute of one micro-batch
    recompute_s: float
    tp_s: float
    p2p_s: float
    backward_s: float
    params: float
    activation_bytes: float  # one micro-batch, all chunks of the rank
    working_bytes: float
    boundary_bytes: float
    ep_s: float = 0.0  # expert-parallel all-to-alls and imbalance
    cp_s: float = 0.0  # context-parallel K/V all-gathers
    expert_params: float = 0.0  # routed-expert parameters held (ep > 1: not sharded by ZeRO, reduced over their replicas)

    @property
    def time_s(self) -> float:  # one micro-batch through the rank
        return self.compute_s + self.recompute_s + self.tp_s + self.p2p_s + self.ep_s + self.cp_s


@dataclass(frozen=True)
class RankBytes:
    """What one pipeline rank holds, without its times (the memory check's part of a Rank)."""

    params: float
    activation_bytes: float  # one micro-batch, all chunks of the rank
    working_bytes: float
    boundary_bytes: float
    expert_params: float = 0.0


@dataclass(frozen=True)
class RankSet:
    ranks: list[Rank]
    slow: Rank  # the rank that sets the pipeline's pace
    time_sum: float
    max_params: float
    chunk_max_s: float = 0.0  # slowest chunk's compute (interleaved schedules)
    distinct: tuple[Rank, ...] = ()  # one rank per set of equal sync inputs (params, times to the nanosecond)


class CostModel:
    """Estimates strategies for one (profile, workload, cluster); caches per-layer tables."""

    def __init__(self, profile: ModelProfile, work: Workload, cluster: Cluster, eff: Efficiency = DEFAULT):
        self.profile, self.work, self.cluster, self.eff = profile, work, cluster, eff
        self.stats = [layer.stats for layer in profile.layers]
        self.n_layers = len(self.stats)
        self._stat_runs = run_lengths(self.stats, lambda a, b: a is b)  # identical layers share one LayerStats
        self.peak = cluster.device.peak_flops_for(work.precision)
        self.model_flops_per_sample = profile.forward_flops + profile.backward_flops
        self.per_param = data_cost.bytes_per_param(work.optimizer, work.precision)  # (param, grad, state) bytes
        dev = cluster.device
        self.comm_overlap = dev.comm_overlap if dev.comm_overlap is not None else eff.comm_overlap
        self.facts = profile.facts  # what the rules read, extracted once by the profiler
        self.reserve_bytes = FRAMEWORK_RESERVE_BYTES[dev.shared_memory]
        self._tables: dict[tuple, LayerTable] = {}
        self._base_costs: dict[tuple, tuple] = {}  # (layer, b, tp, sp, rate, ep, tp placement) -> layer_base_costs()
        self._layouts: dict[tuple, Optional[tuple[int, ...]]] = {}
        self._block_runs: dict[int, list[tuple[float, int]]] = {}  # id(table) -> its block units' times as runs
        self._ranks: dict[tuple, RankSet] = {}
        self._held: dict[tuple, list[RankBytes]] = {}
        self._state_per_param: dict[tuple[int, int, bool], float] = {}  # (ZeRO stage, shard group, accumulating) -> bytes

    @classmethod
    def for_recipe(cls, recipe: Recipe, cluster: Cluster, profile: Optional[ModelProfile] = None, eff: Efficiency = DEFAULT) -> "CostModel":

        profile = profile or profile_recipe(recipe)
        return cls(profile, Workload.from_recipe(recipe, profile), cluster, eff)

    # ---------------------------------------------------------- the step

    def estimate(self, s: Strategy, check: bool = True) -> Estimate:
        if check:
            check_strategy(s, self.facts, self.work.global_batch, self.cluster, precision=self.work.precision)
        b, m = s.microbatch_size(self.work.global_batch), s.num_microbatches(self.work.global_batch)
        topo = self.topology(s)
        rate = self.rate(s, topo.used_per_node)
        table = self.table(s, b, topo, rate)
        counts = self.layout(s, table)
        est = self._evaluate(s, table, counts, m, topo, rate)
        if not est.fits and s.pp > 1 and s.virtual_stages == 1 and s.stages is None and self._relayout_may_fit(s, table, counts, m, topo):
            # the time-balanced cut does not fit: cut again, balancing time under a memory cap
            lean = pipeline_cost.memory_layout(table, self.profile.cuts, s.pp, self.state_bytes_per_param(s),
                                               self._in_flight(s, m), self.capacity_bytes(s) - self.reserve_bytes)
            if lean is not None and lean != counts:
                other = self._evaluate(s, table, lean, m, topo, rate)
                est = other if other.fits else est
        return est

    def _evaluate(self, s: Strategy, table: LayerTable, counts, m: int, topo: Topology, rate: DeviceRate) -> Estimate:
        rs = self.ranks(s, table, counts, topo)
        slow = rs.slow
        if s.schedule.v_shaped:
            bubble = pipeline_cost.zbv_bubble_s if s.schedule is Schedule.ZBV else pipeline_cost.dualpipev_bubble_s
            bubble_s = bubble(slow.compute_s - slow.backward_s, slow.backward_s, slow.recompute_s, s.pp)
            pipe_s = m * slow.time_s + bubble_s
        else:
            keep = pipeline_cost.zero_bubble_keep(slow.compute_s - slow.backward_s, slow.backward_s) if s.schedule is Schedule.ZERO_BUBBLE else 1.0
            pipe_s, bubble_s = pipeline_cost.schedule_time_s(slow.time_s, rs.time_sum, s.pp, m, s.virtual_stages, rs.chunk_max_s, keep)
        time = {
            "compute": m * slow.compute_s,
            "recompute": m * slow.recompute_s,
            "tp_comm": m * slow.tp_s,
            "ep_comm": m * slow.ep_s,
            "cp_comm": m * slow.cp_s,
            "pp_comm": m * slow.p2p_s,
            "bubble": bubble_s,
            "dp_comm": self._sync_s(s, rs.distinct, m, topo),
            "offload": max((self.rank_offload_s(s, r, m) for r in rs.distinct), default=0.0) if s.offload else 0.0,
            "optimizer": self.optimizer_s(s, rs.max_params, rate, topo),
            "data": self._loading_s(s, pipe_s),
        }
        mem, host = self._bytes(s, rs, m, table, topo)
        return self._assemble(s, time, mem, counts, host)

    def _bytes(self, s: Strategy, rs: RankSet, m: int, table: LayerTable, topo: Topology) -> tuple[dict[str, float], float]:
        """(device memory breakdown of the peak rank, host bytes per node)."""
        return self._memory(s, rs.ranks, m, table), self.host_bytes_per_node(s, rs.max_params, topo)

    def held(self, s: Strategy, ranks: Optional[int] = None) -> tuple[LayerTable, list[RankBytes]]:
        """What each pipeline rank holds on `s`'s time-balanced layout (no times), or the first
        `ranks` of them: with held_bytes(), exactly the memory estimate() prices wherever it
        does not cut the layout again under a memory cap (pp = 1, chunks > 1 or fixed
        stages). Read by the planner to check memory before pricing; it depends on the
        sequence parallel, recompute, micro-batch and chunk settings only."""
        b = s.microbatch_size(self.work.global_batch)
        topo = self.topology(s)
        table = self.table(s, b, topo, self.rate(s, topo.used_per_node))
        counts = self.layout(s, table)
        key = (id(table), counts, s.pp, s.virtual_stages, s.schedule.v_shaped, ranks)
        held = self._held.get(key)
        if held is None:
            ranges = pipeline_cost.rank_ranges(counts, s.pp, s.virtual_stages, self.profile.cuts, self.n_layers, s.schedule.v_shaped)
            held = self._held[key] = [self._rank_bytes(s, table, chunks) for chunks in ranges[:ranks]]
        return table, held

    def held_bytes(self, s: Strategy, table: LayerTable, held: Sequence[RankBytes]) -> tuple[float, float]:
        """(device bytes of the peak rank, host bytes per node) of `s` for ranks holding `held`."""
        mem = self._memory(s, held, s.num_microbatches(self.work.global_batch), table)
        host = self.host_bytes_per_node(s, max(r.params for r in held), self.topology(s)) if s.offload else 0.0
        return mem["total"], host

    def optimizer_s(self, s: Strategy, params: float, rate: DeviceRate, topo: Topology) -> float:
        """The optimizer step of a rank holding `params` (linear in them): on the device over
        its ZeRO shard, or with offload on the host, sharing the node's memory bandwidth."""
        if s.offload:
            host_Bps = self.cluster.host_memory_bandwidth_Bps * self.eff.memory_bandwidth / topo.used_per_node
            return offload_cost.host_step_s(params / self._shard_group(s), self.work.optimizer.state_floats_per_param, host_Bps)
        return data_cost.optimizer_step_s(params, self.per_param, s.zero, self._shard_group(s), self.work.precision.is_mixed,
                                          rate.bandwidth_Bps * self.eff.memory_bandwidth)

    def rank_offload_s(self, s: Strategy, r: Rank, m: int) -> float:
        """Exposed PCIe copies of one pipeline rank's shard (convex in its params and times)."""
        busy = m * (r.compute_s + r.recompute_s) * self.comm_overlap
        return offload_cost.pcie_exposed_s(r.params / self._shard_group(s), _gathers(s), m, busy, self.cluster.host_link_Bps)

    def host_bytes_per_node(self, s: Strategy, params: float, topo: Topology) -> float:
        """Host memory the offloaded shards of one node's ranks take (0 without offload)."""
        if not s.offload:
            return 0.0
        shard = params / self._shard_group(s)
        return topo.used_per_node * offload_cost.host_state_bytes(shard, self.work.optimizer.state_floats_per_param)

    def _sync_s(self, s: Strategy, ranks: Sequence[Rank], m: int, topo: Topology) -> float:
        """Exposed gradient / parameter synchronisation of one step: each pipeline rank's dp
        group synchronises its own layers, and the step waits for the one exposing most."""
        if s.dp * s.cp == 1 or s.data_partition is DataPartition.FEATURES:
            return 0.0
        return max(self.rank_sync_s(s, r, m, topo) for r in ranks)

    def rank_sync_s(self, s: Strategy, r: Rank, m: int, topo: Topology, last_bucket_waits: bool = True) -> float:
        """One pipeline rank's exposed synchronisation over its dp group. A sharded stage moves
        at least DDP's bytes through the same group (ZeRO-1/2: reduce-scatter + all-gather =
        one all-reduce; ZeRO-3: that per micro-batch plus a second gather), so it never
        exposes less than DDP would. With `last_bucket_waits=False` (no one-bucket minimum) it
        is convex in the rank's (params, times), so plan/bounds.py bounds the maximum over
        ranks by its value at their average (Jensen's inequality)."""
        if s.dp * s.cp == 1 or s.data_partition is DataPartition.FEATURES:
            return 0.0
        cl, eff, (p, g, _) = self.cluster, self.eff, self.per_param
        if s.subnet:
            return local_sgd_cost.averaging_s(subnet_cost.partitioned_params(self.stats) * p / s.dp, topo.dp, s.sync_every, cl, eff)
        if s.sync is Sync.ASYNC:
            return local_sgd_cost.averaging_s(r.params * 4, topo.dp, s.sync_every, cl, eff)
        experts = 0.0
        if s.ep > 1 and r.expert_params:
            # split experts: all-reduced over the ranks holding the same experts after backward
            # (techniques/expert/apply.py), not overlapped; the rest as below
            experts = coll.all_reduce_s(r.expert_params * g, topo.expert_replicas, cl, eff)
            r = replace(r, params=r.params - r.expert_params, expert_params=0.0)
        return experts + self._dense_sync_s(s, r, m, topo, last_bucket_waits)

    def _dense_sync_s(self, s: Strategy, r: Rank, m: int, topo: Topology, last_bucket_waits: bool) -> float:
        """rank_sync_s of parameters that are replicated over dp (or ZeRO-sharded)."""
        cl, eff, (p, g, _) = self.cluster, self.eff, self.per_param
        window = r.backward_s * self.comm_overlap
        hsdp = s.dp_shard is not None
        group = topo.shard if hsdp else topo.dp  # the ranks ZeRO shards over
        link = cl.intra_node if group.nodes == 1 else cl.inter_node
        # HSDP: each rank's 1 / dp_shard of the gradients is all-reduced across the replicas on
        # their own links, hiding under the backward (a convex term added to the shard group's)
        replicate = 0.0
        if hsdp:
            rep_link = cl.intra_node if topo.replicate.nodes == 1 else cl.inter_node
            replicate = max(0.0, coll.all_reduce_s(r.params * g / s.dp_shard, topo.replicate, cl, eff) * rep_link.fsdp_factor - window)
        # DDP's traffic floors plain ZeRO; HSDP moves fewer cross-node bytes than DDP, so no floor
        ddp = 0.0 if hsdp else data_cost.ddp_sync(r.params * g, topo.dp, window, cl, eff, last_bucket_waits).exposed_s * link.ddp_factor
        if s.zero == 0:
            return ddp
        if s.zero in (1, 2):  # ZeRO-1 runs as DDP + sharded optimizer, ZeRO-2 as FSDP2 (techniques/data/apply.py)
            factor = link.ddp_factor if s.zero == 1 else link.fsdp_factor
            return max(ddp, data_cost.zero12_sync(r.params * g, r.params * p, group, window, cl, eff, last_bucket_waits).exposed_s * factor) + replicate
        o = self.comm_overlap
        forward_busy = m * (r.compute_s - r.backward_s + r.tp_s / 2) * o
        backward_busy = m * (r.backward_s + r.recompute_s + r.tp_s / 2) * o
        return max(ddp, data_cost.zero3_sync_s(r.params * p, r.params * g, _gathers(s), m, forward_busy, backward_busy,
                                               1 / max(1, self.n_layers), group, cl, eff, link.fsdp_factor)) + replicate

    def _loading_s(self, s: Strategy, busy_s: float) -> float:
        """Input batches: read from storage when a node's shard exceeds its host memory, then
        copied to the device; exposed beyond the pipeline's busy time."""
        w, cl = self.work, self.cluster
        nodes = max(1, -(-s.devices // cl.devices_per_node))
        per_node_step = w.global_batch * w.sample_bytes / nodes  # feature partitions still read whole samples per node
        shard = w.samples * w.sample_bytes / nodes
        read = per_node_step / w.storage_Bps if shard > cl.host_memory_bytes * 0.8 else 0.0
        copy = 0.0 if cl.device.shared_memory else per_node_step / min(cl.devices_per_node, s.devices) / cl.host_link_Bps
        return max(0.0, read + copy - busy_s)

    def _memory(self, s: Strategy, ranks: Sequence[Rank | RankBytes], m: int, table: LayerTable) -> dict[str, float]:
        """The peak over pipeline ranks of states + activations in flight + buffers + reserve."""
        per_param = self.state_bytes_per_param(s)
        flights = self._in_flight(s, m)
        peak = max(range(len(ranks)), key=lambda r: ranks[r].params * per_param + ranks[r].activation_bytes * flights[r]
                   + ranks[r].working_bytes + 2 * ranks[r].boundary_bytes)
        rank = ranks[peak]
        # experts split by ep stay whole on their rank (FSDP ignores them: techniques/expert/apply.py)
        states = data_cost.model_state_bytes(rank.params - rank.expert_params, self.per_param, s.zero, self._shard_group(s), m > 1)
        if rank.expert_params:
            whole = data_cost.model_state_bytes(rank.expert_params, self.per_param, 0, 1)
            states = data_cost.StateBytes(states.params + whole.params, states.grads + whole.grads, states.optimizer + whole.optimizer)
        if s.offload:  # every shard in host memory (host_bytes_per_node)
            states = data_cost.StateBytes(0.0, 0.0, 0.0)
        buffers = 2 * rank.boundary_bytes + self.shared_buffer_bytes(s, table.max_params)
        out = {"params": states.params, "grads": states.grads, "optimizer": states.optimizer,
               "activations": rank.activation_bytes * flights[peak] + rank.working_bytes, "buffers": buffers,
               "reserve": self.reserve_bytes}
        out["total"] = sum(out.values())
        return out

    def shared_buffer_bytes(self, s: Strategy, max_layer_params: float) -> float:
        """Buffers every rank holds whatever its layers: DDP's buckets in flight, or under
        ZeRO-3 a layer's gathered parameters and the next one prefetched."""
        if s.dp * s.cp > 1 and s.zero == 0 and s.sync is Sync.SYNC:
            return 2 * data_cost.DDP_BUCKET_BYTES
        if s.zero >= 3:
            return 2 * max_layer_params * self.per_param[0]
        return 0.0

    def _assemble(self, s: Strategy, time: dict[str, float], mem: dict[str, float], counts, host_bytes: float = 0.0) -> Estimate:
        w = self.work
        step = sum(time.values())
        capacity = self.capacity_bytes(s)
        host_capacity = self.host_capacity_bytes
        fits = mem["total"] <= capacity and host_bytes <= host_capacity
        reason = None
        if mem["total"] > capacity:
            reason = f"needs {mem['total'] / GB:.3g} GB per device > {capacity / GB:.3g} GB"
        elif host_bytes > host_capacity:
            reason = (f"offload needs {host_bytes / GB:.3g} GB of host memory per node > {host_capacity / GB:.3g} GB "
                      f"({HOST_MEMORY_USABLE:.0%} of {self.cluster.host_memory_bytes / GB:.3g} GB)")
        flops = self.flops_per_sample(s) * w.global_batch
        tflops = flops / step / s.devices if step > 0 else 0.0
        return Estimate(
            strategy=s,
            devices_used=s.devices,
            fits=fits,
            reason=reason,
            step_time_s=step,
            time_breakdown_s=time,
            memory_per_device_bytes=mem["total"],
            memory_breakdown_bytes={k: v for k, v in mem.items() if k != "total"},
            throughput_samples_s=w.global_batch / step if step > 0 else math.inf,
            tokens_per_s=w.global_batch * w.tokens_per_sample / step if w.tokens_per_sample and step > 0 else None,
            tflops_per_device=tflops / 1e12,
            mfu=tflops / self.peak if self.peak else 0.0,
            steps_factor=self.steps_factor(s),
            time_to_train_s=w.steps * self.steps_factor(s) * step,
            stages=counts,
        )

    # ---------------------------------------------------------- technique terms

    def flops_per_sample(self, s: Strategy) -> float:
        """Model FLOPs (forward + backward) per sample the strategy executes."""
        return subnet_cost.flops_per_sample(self.stats, s.dp) if s.subnet else self.model_flops_per_sample

    def steps_factor(self, s: Strategy) -> float:
        """Steps to the same loss relative to synchronous training (statistical efficiency)."""
        factor = 1.0
        if s.sync is Sync.ASYNC and s.dp > 1:
            factor *= local_sgd_cost.steps_factor(s.sync_every)
        if s.sync is Sync.ASYNC:
            factor *= threads_cost.hogwild_steps_factor(s.threads)
        if s.subnet:
            factor *= subnet_cost.steps_factor(s.dp)
        return factor

    def _shard_group(self, s: Strategy) -> int:
        """Ranks ZeRO shards over: the dp group of synchronous sample-parallel replicas (HSDP:
        its shard group; with context parallelism, dp x cp: FSDP2 shards over the flattened group)."""
        return s.shard_size * s.cp if s.data_partition is DataPartition.SAMPLES and not s.subnet and s.sync is Sync.SYNC else 1

    def state_bytes_per_param(self, s: Strategy) -> float:
        """Device bytes of model states per parameter (offload: none stay on the device)."""
        if s.offload:
            return 0.0
        key = (s.zero, self._shard_group(s), s.num_microbatches(self.work.global_batch) > 1)
        found = self._state_per_param.get(key)
        if found is None:
            found = self._state_per_param[key] = data_cost.model_state_bytes(1.0, self.per_param, *key).total
        return found

    @property
    def host_capacity_bytes(self) -> float:
        """Host memory per node offloaded states may take."""
        return self.cluster.host_memory_bytes * HOST_MEMORY_USABLE

    def capacity_bytes(self, s: Strategy) -> float:
        return self.cluster.device.memory_bytes * s.threads

    def _in_flight(self, s: Strategy, m: int) -> tuple[float, ...]:
        return tuple(pipeline_cost.microbatches_in_flight(s.schedule, r, s.pp, m, s.virtual_stages) for r in range(s.pp))

    def _relayout_may_fit(self, s: Strategy, table: LayerTable, counts, m: int, topo: Topology) -> bool:
        """Moving layers between stages cannot bring the fullest stage below the average:
        skip the memory-aware cut when even the average stage overflows."""
        ranks = self.ranks(s, table, counts, topo).ranks
        per_param, flights = self.state_bytes_per_param(s), self._in_flight(s, m)
        average = sum(r.params * per_param + r.activation_bytes * f for r, f in zip(ranks, flights)) / len(ranks)
        return average <= self.capacity_bytes(s) - self.reserve_bytes

    # ---------------------------------------------------------- tables (cached)

    def topology(self, s: Strategy) -> Topology:
        dpn = self.cluster.devices_per_node
        used_per_node = min(dpn, s.devices)
        tp = coll.place(s.tp, s.threads, dpn, used_per_node)
        dp = coll.place(s.dp * s.cp, s.threads * s.tp, dpn, used_per_node)  # gradients: over the dp x cp ranks
        shard = replicate = None
        if s.dp_shard is not None:
            shard = coll.place(s.dp_shard, s.threads * s.tp, dpn, used_per_node)
            replicate = coll.place(s.dp // s.dp_shard, s.threads * s.tp * s.dp_shard, dpn, used_per_node)
        ep = expert_replicas = None
        if s.ep > 1:  # ep neighbouring dp ranks (stride tp), and the dp / ep ranks holding the same experts
            ep = coll.place(s.ep, s.threads * s.tp, dpn, used_per_node)
            expert_replicas = coll.place(s.dp // s.ep, s.threads * s.tp * s.ep, dpn, used_per_node)
        cp = coll.place(s.cp, s.threads * s.tp, dpn, used_per_node) if s.cp > 1 else None
        return Topology(tp, dp, s.threads * s.tp * s.dp * s.cp >= dpn and s.pp > 1, used_per_node, shard, replicate, ep, expert_replicas, cp)

    def rate(self, s: Strategy, used_per_node: int) -> DeviceRate:
        dev = self.cluster.device
        flops = threads_cost.thread_flops(self.peak, s.threads, dev.thread_efficiency)
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

    def table(self, s: Strategy, b: int, topo: Topology, rate: DeviceRate) -> LayerTable:
        subnet_split = s.dp if s.subnet else 1
        feature_split = s.dp if s.data_partition is DataPartition.FEATURES else 1
        key = (b, s.tp, s.sequence_parallel, s.recompute, rate, topo.tp, subnet_split, feature_split, topo.dp if feature_split > 1 else None,
               topo.ep if s.ep > 1 else None, topo.cp if s.cp > 1 else None)
        table = self._tables.get(key)
        if table is None:
            runs = self._layer_cost_runs(s, b, topo, rate)
            table = self._tables[key] = LayerTable([c for c, n in runs for _ in range(n)], runs)
        return table

    def _layer_cost_runs(self, s: Strategy, b: int, topo: Topology, rate: DeviceRate) -> list[tuple[LayerCosts, int]]:
        """Per run of identical layers (the profile's), one micro-batch of b samples on one
        rank; with context parallelism each rank computes 1/cp of every sample's tokens
        (context/cost.py): costs at b / cp samples. A feature partition splits layer 0 only."""
        features = s.data_partition is DataPartition.FEATURES
        by_stats: dict[tuple, LayerCosts] = {}
        runs, start = [], 0
        for stats, n in self._stat_runs:
            pieces = [(True, 1), (False, n - 1)] if features and start == 0 else [(False, n)]
            for feature_layer, count in pieces:
                if count:
                    key = (id(stats), feature_layer)
                    if key not in by_stats:
                        by_stats[key] = self._one_layer_costs(s, stats, b, topo, rate, feature_layer)
                    runs.append((by_stats[key], count))
            start += n
        return runs

    def _one_layer_costs(self, s: Strategy, stats: LayerStats, b: int, topo: Topology, rate: DeviceRate, feature_layer: bool) -> LayerCosts:
        cl, eff = self.cluster, self.eff
        if s.subnet and s.dp > 1 and is_mlp_layer(stats):
            return subnet_cost.subnet_layer_costs(stats, b, s.dp, s.recompute, rate, eff)
        if feature_layer:
            return features_cost.feature_layer_costs(stats, b, s.dp, s.recompute, rate, eff, lambda n: coll.all_reduce_s(n, topo.dp, cl, eff))
        share = b / s.cp
        base_key = (id(stats), share, s.tp, s.sequence_parallel, rate, s.ep, topo.tp)
        base = self._base_costs.get(base_key)
        if base is None:  # what the three recompute modes' tables share
            base = self._base_costs[base_key] = layer_base_costs(stats, share, s.tp, s.sequence_parallel, rate, eff,
                                                                 lambda n: coll.all_reduce_s(n, topo.tp, cl, eff),
                                                                 cl.device.tp_module_overhead_s, s.ep)
        costs = layer_costs(stats, share, s.tp, s.sequence_parallel, s.recompute, rate, eff, lambda n: coll.all_reduce_s(n, topo.tp, cl, eff),
                            tp_module_overhead_s=cl.device.tp_module_overhead_s, ep=s.ep,
                            all_to_all=lambda n: coll.all_to_all_s(n, topo.ep, cl, eff), base=base)
        if s.cp > 1 and stats.kv_bytes:
            costs = replace(costs, cp_s=context_cost.kv_exchange_s(stats.kv_bytes * b / s.tp, lambda n: coll.all_gather_s(n, topo.cp, cl, eff)))
        return costs

    def layout(self, s: Strategy, table: LayerTable) -> Optional[tuple[int, ...]]:
        """Blocks of the `layers` stack per pipeline chunk (None without a pipeline): given by
        the strategy, else balanced by time with the embedding riding on the first block and
        the head on the last. This is the layout the runtime executes (`with_stages`)."""
        chunks = s.pp * s.virtual_stages
        if chunks == 1:
            return None
        if s.stages is not None:
            return s.stages
        first = (id(table), chunks)
        if first not in self._layouts:
            runs = self._block_runs.get(id(table))  # one table is laid out at many chunk counts
            if runs is None:
                runs = self._block_runs[id(table)] = pipeline_cost.block_runs(table.times, self.profile.cuts)
            ref = max(t for t, _ in runs) or 1.0
            # a pure function of the rounded shape, so every table of that shape gets one layout
            # whichever is priced first (the search and a brute force agree to the bit)
            shape = (chunks, tuple((round(t / ref, 4), n) for t, n in runs))
            if shape not in self._layouts:
                self._layouts[shape] = pipeline_cost.layout_runs(list(shape[1]), chunks)
            self._layouts[first] = self._layouts[shape]
        return self._layouts[first]

    def with_stages(self, s: Strategy) -> Strategy:
        """`s` with the stage layout this model prices for it written in: what `autopar run`
        executes, so the run is the prediction's."""
        if s.pp == 1 or s.stages is not None:
            return s
        return replace(s, stages=self.estimate(s, check=False).stages)

    def ranks(self, s: Strategy, table: LayerTable, counts: Optional[tuple[int, ...]], topo: Topology) -> RankSet:
        """Per pipeline rank: one micro-batch's time by kind, parameters and activations (cached)."""
        key = (id(table), counts, s.pp, s.virtual_stages, s.schedule.v_shaped, topo.pp_crosses_nodes, topo.used_per_node, s.tp,
               s.sequence_parallel)
        found = self._ranks.get(key)
        if found is None:
            ranges = pipeline_cost.rank_ranges(counts, s.pp, s.virtual_stages, self.profile.cuts, self.n_layers, s.schedule.v_shaped)
            ranks = [self._rank(s, table, chunks, topo) for chunks in ranges]
            chunk_max = max(table.range_time(a, e) for chunks in ranges for a, e in chunks) if s.virtual_stages > 1 else 0.0
            distinct = {(round(r.params), round(r.backward_s * 1e9), round(r.compute_s * 1e9), round(r.recompute_s * 1e9),
                         round(r.tp_s * 1e9)): r for r in ranks}  # ranks of equal blocks differ only by rounding
            found = self._ranks[key] = RankSet(ranks, max(ranks, key=lambda r: r.time_s), sum(r.time_s for r in ranks),
                                               max(r.params for r in ranks), chunk_max, tuple(distinct.values()))
        return found

    def _rank(self, s: Strategy, table: LayerTable, chunks: list[tuple[int, int]], topo: Topology) -> Rank:
        p2p = 0.0
        if s.pp > 1:
            p2p = pipeline_cost.p2p_s(chunks, lambda i: table.costs[i].output_bytes, self.n_layers, s.tp, s.sequence_parallel,
                                      topo.pp_crosses_nodes, topo.used_per_node, topo.tp, self.cluster, self.eff)
        fwd, bwd, rec, tpf, tpb, eps, cps = (table.prefix[f] for f in ("forward_s", "backward_s", "recompute_s", "tp_forward_s",
                                                                       "tp_backward_s", "ep_s", "cp_s"))
        sums = [0.0] * 6
        for a, e in chunks:  # one pass over the chunks, prefix-sum differences
            sums[0] += fwd[e] - fwd[a]
            sums[1] += bwd[e] - bwd[a]
            sums[2] += rec[e] - rec[a]
            sums[3] += tpf[e] - tpf[a] + tpb[e] - tpb[a]
            sums[4] += eps[e] - eps[a]
            sums[5] += cps[e] - cps[a]
        held = self._rank_bytes(s, table, chunks)
        return Rank(
            compute_s=sums[0] + sums[1],
            recompute_s=sums[2],
            tp_s=sums[3],
            p2p_s=p2p,
            backward_s=sums[1],
            params=held.params,
            activation_bytes=held.activation_bytes,
            working_bytes=held.working_bytes,
            boundary_bytes=held.boundary_bytes,
            ep_s=sums[4],
            cp_s=sums[5],
            expert_params=held.expert_params,
        )

    @staticmethod
    def _rank_bytes(s: Strategy, table: LayerTable, chunks: list[tuple[int, int]]) -> RankBytes:
        """Parameters, saved activations (one micro-batch), working set and boundary tensor of
        a rank holding layers `chunks`."""
        par, act, exp = table.prefix["params"], table.prefix["activation_bytes"], table.prefix["expert_params"]
        return RankBytes(
            params=sum(par[e] - par[a] for a, e in chunks),
            activation_bytes=sum(act[e] - act[a] for a, e in chunks),
            working_bytes=max(table.max_working(a, e) for a, e in chunks),
            boundary_bytes=max(table.costs[e - 1].output_bytes for a, e in chunks) if s.pp > 1 else 0.0,
            expert_params=sum(exp[e] - exp[a] for a, e in chunks) if s.ep > 1 else 0.0,
        )

def _gathers(s: Strategy) -> int:
    """ZeRO-3 all-gathers of each layer per micro-batch: forward, backward, and recomputation."""
    return 3 if s.recompute is Recompute.FULL else 2


def estimate(recipe: Recipe, cluster: Cluster, strategy: Strategy, profile: Optional[ModelProfile] = None) -> Estimate:
    """One-call API: profile the recipe's model (unless given) and estimate the strategy."""
    return CostModel.for_recipe(recipe, cluster, profile).estimate(strategy)
