"""Plain-word explanations: why the winner won, why each technique family lost,
and what would make a recipe that fits nowhere fit."""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

from autopar.cost.estimate import Estimate
from autopar.errors import InputError
from autopar.plan.families import FAMILIES, family_of
from autopar.plan.result import Rejected, score
from autopar.plan.space import SearchContext, device_counts
from autopar.spec.cluster import Cluster
from autopar.spec.enums import DataPartition, Recompute, Sync
from autopar.spec.strategy import Strategy
from autopar.techniques import plan_problem
from autopar.techniques.context.space import CP_MIN_TOKENS

GB = 1e9
_PART_NAMES = {
    "compute": "compute",
    "recompute": "recomputation",
    "tp_comm": "tensor-parallel all-reduces",
    "ep_comm": "expert-parallel all-to-alls",
    "cp_comm": "context-parallel key/value all-gathers",
    "pp_comm": "pipeline sends",
    "bubble": "the pipeline bubble",
    "dp_comm": "gradient/parameter synchronisation",
    "offload": "host-device copies (offload)",
    "optimizer": "the optimizer step",
    "data": "data loading",
}


def _gb(x: float) -> str:
    return f"{x / 1e12:.3g} TB" if x >= 1e12 else f"{x / GB:.3g} GB" if x >= 1e8 else f"{x / 1e6:.3g} MB"


def _s(x: float) -> str:
    return f"{x:.3g} s" if x >= 1 else f"{x * 1e3:.3g} ms" if x >= 1e-3 else f"{x * 1e6:.3g} us"


def _tp_crosses(s: Strategy, cluster: Cluster) -> bool:
    return s.tp * s.threads > cluster.devices_per_node


def winner(e: Estimate, model, cluster: Cluster, index: int, best: Estimate) -> str:
    s, cap = e.strategy, cluster.device.memory_bytes * e.strategy.threads
    parts = []
    if index > 0:
        parts.append(f"{e.step_time_s / best.step_time_s:.3g}x the step time of plan 1.")
    one = _single_replica_memory(model)
    if s.devices == 1 and s.offload:
        parts.append(f"One device with host offload: one replica needs {_gb(one)} > {_gb(cap)}, so its parameters, "
                     f"gradients and optimizer states live in host memory (ZeRO-Offload / FSDP2 CPUOffloadPolicy), the "
                     f"optimizer steps on the host ({_s(e.time_breakdown_s['optimizer'])}) and each block is copied in "
                     f"for its forward and backward ({_s(e.time_breakdown_s['offload'])} exposed).")
    elif s.devices == 1:
        parts.append(f"No parallelism: the model, its optimizer state and activations fit one device "
                     f"({_gb(e.memory_per_device_bytes)} of {_gb(cap)}), and no split pays for its communication.")
    elif s.threads > 1 and s.dp == 1:
        parts.append(f"Computational parallelism: {s.threads} workers share one memory and one copy of the model; "
                     f"no data or model is partitioned" + (", updates are lock-free (Hogwild)." if s.sync is Sync.ASYNC else "."))
    elif s.data_partition is DataPartition.FEATURES:
        parts.append(f"Data parallelism by feature dimensions: the input layer's {model.profile.feature_dim:,} features are "
                     f"split over {s.dp} workers, each holding 1/{s.dp} of its weights; one all-reduce of partial sums per step.")
    elif s.subnet:
        parts.append(f"Independent subnetworks: the hidden units are partitioned over {s.dp} workers that train "
                     f"without communicating for {s.sync_every} steps (x{e.steps_factor:.3g} steps to the same loss).")
    else:
        parts.append(_model_split_text(e, s, one, cap, cluster, model.facts.experts))
    if s.sync is Sync.ASYNC and s.dp > 1:
        parts.append(f"Local SGD: parameters averaged every {s.sync_every} steps; needs x{e.steps_factor:.3g} steps.")
    top = max(e.time_breakdown_s.items(), key=lambda kv: kv[1])
    parts.append(f"Step {_s(e.step_time_s)}, dominated by {_PART_NAMES[top[0]]} ({top[1] / e.step_time_s:.0%}); "
                 f"{_gb(e.memory_per_device_bytes)} of {_gb(cap)} per device; MFU {e.mfu:.1%}.")
    return " ".join(parts)


def _single_replica_memory(model) -> float:
    """Least memory of one whole replica on one device: micro-batch 1, full recompute."""
    gb = model.work.global_batch
    small = Strategy(microbatch=1 if gb > 1 else None, recompute=Recompute.FULL)
    return model.estimate(small, check=False).memory_per_device_bytes


def _model_split_text(e: Estimate, s: Strategy, one: float, cap: float, cluster: Cluster, experts: int = 0) -> str:
    words = []
    if s.tp == 1 and s.pp == 1:
        kind = {0: "replicated", 1: "optimizer states sharded (ZeRO-1)", 2: "gradients and optimizer states sharded (ZeRO-2)",
                3: "parameters, gradients and optimizer states sharded (ZeRO-3/FSDP)"}[s.zero]
        fits = f"one replica fits a device ({_gb(one)} of {_gb(cap)})" if one <= cap else f"one replica needs {_gb(one)} > {_gb(cap)}"
        sync = "gradients all-reduced" if s.zero == 0 else "gradients reduce-scattered, parameters all-gathered"
        if s.dp_shard is not None:
            kind += f" inside groups of {s.dp_shard} ranks (HSDP: one node each, {s.dp // s.dp_shard} replicas)"
            sync += f", the shards' gradients all-reduced across the {s.dp // s.dp_shard} replicas"
        words.append(f"Data parallelism over {s.dp} workers: {fits}, so the batch is split by samples; model states {kind}; "
                     f"{sync} synchronously ({_s(e.time_breakdown_s['dp_comm'])} exposed).")
    else:
        words.append(f"Model parallelism: one replica needs {_gb(one)} > {_gb(cap)} per device." if one > cap
                     else "Model parallelism pays off although one replica would fit:")
        if s.tp > 1:
            where = "inside a node (NVLink-class links)" if not _tp_crosses(s, cluster) else "across nodes"
            words.append(f"Tensor parallel tp={s.tp} splits each layer vertically {where}, "
                         f"costing {_s(e.time_breakdown_s['tp_comm'])} of all-reduces" + (" with sequence parallelism." if s.sequence_parallel else "."))
        if s.pp > 1:
            sched = s.schedule.value + (f" with {s.virtual_stages} chunks per rank" if s.virtual_stages > 1 else "")
            words.append(f"Pipeline pp={s.pp} splits the layers horizontally ({sched}, micro-batch {s.microbatch}); "
                         f"bubble {_s(e.time_breakdown_s['bubble'])}.")
        if s.dp > 1:
            hsdp = f" (HSDP: shards of {s.dp_shard})" if s.dp_shard else ""
            words.append(f"Data parallel dp={s.dp} over the rest" + (f" with ZeRO-{s.zero}{hsdp}." if s.zero else "."))
    if s.ep > 1:
        words.append(f"Expert parallel ep={s.ep}: each MoE layer's {experts} experts are split over groups of {s.ep} "
                     f"dp ranks ({experts // s.ep} per rank, not sharded or gathered by ZeRO); rows travel by "
                     f"all-to-all ({_s(e.time_breakdown_s['ep_comm'])} with the busiest rank's extra load).")
    if s.cp > 1:
        words.append(f"Context parallel cp={s.cp}: each sample's sequence is split over {s.cp} ranks (zigzag chunks, "
                     f"balanced causal work), each holding 1/{s.cp} of its activations; attention gathers keys and values "
                     f"({_s(e.time_breakdown_s['cp_comm'])}).")
    if s.offload and s.devices > 1:
        words.append(f"Host offload keeps every state shard in host memory; the optimizer steps on the host "
                     f"({_s(e.time_breakdown_s['optimizer'])}), copies expose {_s(e.time_breakdown_s['offload'])}.")
    if s.recompute is not Recompute.NONE:
        words.append(f"Recompute {s.recompute.value} trades {_s(e.time_breakdown_s['recompute'])} for activation memory.")
    if s.devices < cluster.devices:
        words.append(f"Uses {s.devices} of {cluster.devices} devices: more would not be faster.")
    return " ".join(words)


def why_not(s: Strategy, best: Estimate, model, cluster: Cluster, objective, fixed: Optional[dict] = None) -> str:
    """Why a strategy the user names is not plan 1: invalid, out of memory, or slower (and by what)."""
    problem = plan_problem(s, model.facts, model.work.global_batch, model.work.precision, cluster)
    if problem is not None:
        return f"cannot run: {problem}"
    e = model.estimate(s, check=False)
    if e.fits and score(e, objective) < score(best, objective) * (1 - 1e-9):
        return (f"it beats plan 1: {_s(e.step_time_s)} per step vs {_s(best.step_time_s)}, "
                f"{score(best, objective) / score(e, objective):.4g}x better; {outside_space(s, cluster, fixed)}")
    if e.fits and score(e, objective) <= score(best, objective) * (1 + 1e-9):
        return f"it would not lose: {_s(e.step_time_s)} per step, as fast as plan 1 (a tie: plan 1 uses less memory or fewer devices)"
    return _loss_reason(e, best, cluster, objective, leanest=False)


def outside_space(s: Strategy, cluster: Cluster, fixed: Optional[dict] = None) -> str:
    """Why the search did not return a strategy that beats its plan 1: the part of it that lies
    outside the searched space (the search is exact inside it, tests/test_planner_oracle.py)."""
    differs = {k: v for k, v in (fixed or {}).items() if getattr(s, k) != v and not (k == "microbatch" and v is None)}
    if differs:
        return "--fix " + ",".join(f"{k}={getattr(v, 'value', v)}" for k, v in differs.items()) + " excludes it"
    if s.stages is not None:
        return f"its hand-set stage layout {'/'.join(map(str, s.stages))} is not searched (the planner balances stages itself)"
    if s.tp > 2 * cluster.devices_per_node:
        return f"tp={s.tp} is not searched (tensor parallel is searched up to 2 nodes' worth, {2 * cluster.devices_per_node})"
    ctx = SearchContext(None, cluster, 0, None, max_tp=0)  # device_counts reads the cluster only
    if s.devices not in device_counts(ctx, {}):
        return (f"{s.devices} devices is not a count the search tries (the cluster, its halvings, "
                "and whole nodes in powers of two)")
    return "the search should have found it: please report this recipe (a planner bug)"


def _loss_reason(f: Estimate, w: Estimate, cluster: Cluster, objective, leanest: bool = True) -> str:
    s = f.strategy
    cap = cluster.device.memory_bytes * s.threads
    if not f.fits:
        return f"needs {_gb(f.memory_per_device_bytes)} per device > {_gb(cap)}{' even at its leanest' if leanest else ''} ({s.to_text()})"
    if _tp_crosses(s, cluster) and f.time_breakdown_s["tp_comm"] > w.time_breakdown_s["tp_comm"]:
        extra = f.time_breakdown_s["tp_comm"] - w.time_breakdown_s["tp_comm"]
        return f"tp={s.tp} crosses nodes: its all-reduces on the inter-node network add {_s(extra)} per step ({s.to_text()})"
    ratio = f.time_to_train_s / w.time_to_train_s if w.time_to_train_s else float("inf")
    worse = max(f.time_breakdown_s, key=lambda k: f.time_breakdown_s[k] - w.time_breakdown_s.get(k, 0.0))
    extra = f.time_breakdown_s[worse] - w.time_breakdown_s.get(worse, 0.0)
    text = f"{_s(f.step_time_s)} per step vs {_s(w.step_time_s)}"
    if f.steps_factor != w.steps_factor:
        text += f", x{f.steps_factor:.3g} steps to the same loss"
    text += f": {ratio:.3g}x the time to train"
    if extra > 0:
        text += f"; {_PART_NAMES[worse]} adds {_s(extra)}"
    if ratio <= 1.0 + 1e-9:
        text = f"as fast ({_s(f.step_time_s)} per step) but uses more memory or devices"
    return f"{text} ({s.to_text()})"


_REPRESENTATIVE = {
    "single device": Strategy(),
    "shared-memory workers (threads)": Strategy(threads=2),
    "Hogwild (asynchronous threads)": Strategy(threads=2, sync=Sync.ASYNC),
    "data parallel (DDP)": Strategy(dp=2),
    "sharded data parallel (ZeRO-1/2)": Strategy(dp=2, zero=1),
    "fully sharded data parallel (ZeRO-3/FSDP)": Strategy(dp=2, zero=3),
    "hybrid sharded data parallel (HSDP)": Strategy(dp=4, zero=3, dp_shard=2),
    "host offload (ZeRO-Offload)": Strategy(zero=3, offload=True),
    "expert parallel (MoE)": Strategy(dp=2, ep=2),
    "context parallel (long sequences)": Strategy(cp=2),
    "asynchronous data parallel (local SGD)": Strategy(dp=2, sync=Sync.ASYNC, sync_every=4),
    "data parallel by features": Strategy(dp=2, data_partition=DataPartition.FEATURES),
    "independent subnetworks": Strategy(dp=2, subnet=True, sync_every=4),
    "tensor parallel": Strategy(tp=2),
    "pipeline parallel": Strategy(pp=2, microbatch=1),  # micro-batches of one sample: as many as the batch allows
    "hybrid (data x tensor x pipeline)": Strategy(dp=2, tp=2, pp=2, microbatch=1),
}


_SHARDED = {"sharded data parallel (ZeRO-1/2)": 2, "fully sharded data parallel (ZeRO-3/FSDP)": 3}


def rejected(family_best: dict[str, Estimate], w: Estimate, model, cluster: Cluster, objective,
             family_bound: Optional[dict[str, float]] = None, family_smallest: Optional[dict[str, Estimate]] = None,
             family_problem: Optional[dict[str, str]] = None, fixed: Optional[dict] = None) -> tuple:
    out = []
    facts = model.facts
    won = family_of(w.strategy)
    ddp = family_best.get("data parallel (DDP)")
    for fam in FAMILIES:
        if fam == won:
            continue
        f = family_best.get(fam)
        if f is not None and not f.fits and family_smallest and fam in family_smallest:
            f = family_smallest[fam]  # nothing of the family fits: show its leanest attempt
        if f is None and fam in _SHARDED and ddp is not None and ddp.fits:
            # never searched: ZeRO stages are tried only when plain data parallel does not fit
            f = model.estimate(replace(ddp.strategy, zero=_SHARDED[fam]), check=False)
        if f is not None:
            out.append(Rejected(fam, f.strategy, _loss_reason(f, w, cluster, objective)))
            continue
        if family_bound and fam in family_bound:
            steps = model.work.steps or 1
            out.append(Rejected(fam, None, f"pruned: even at peak speed it would need {_s(family_bound[fam] / steps)} per step "
                                           f"(lower bound) vs {_s(w.step_time_s)}"))
            continue
        if family_problem and fam in family_problem:
            out.append(Rejected(fam, None, f"not applicable: {family_problem[fam]}"))
            continue
        rep = _REPRESENTATIVE[fam]
        pinned = ",".join(f"{k}={getattr(v, 'value', v)}" for k, v in (fixed or {}).items())
        if fixed and family_of(replace(rep, **fixed)) != fam:
            out.append(Rejected(fam, None, f"not searched: --fix {pinned} leaves no strategy of this family"))
            continue
        problem = plan_problem(rep, facts, model.work.global_batch, model.work.precision, None)
        if problem is None and rep.threads > 1 and not cluster.device.shared_memory:
            problem = f"{cluster.device.name} devices do not share memory"
        if problem is None and rep.offload and cluster.device.shared_memory:
            problem = f"{cluster.device.name} devices share the host's memory: there is nothing to offload to"
        if problem is None and rep.dp_shard and cluster.nodes == 1:
            problem = (f"one node: HSDP shards inside a node and replicates across nodes, so on {cluster.devices} devices "
                       f"of one node it is ZeRO-2/3 over them")
        if problem is None and rep.cp > 1 and facts.seq_len and facts.seq_len // 2 < CP_MIN_TOKENS:
            problem = (f"sequences of {facts.seq_len:,} tokens: context parallelism is searched only where each rank keeps "
                       f"{CP_MIN_TOKENS:,} tokens or more (sequences of {2 * CP_MIN_TOKENS:,}+ for cp=2)")
        if problem is None and rep.devices > cluster.devices:
            problem = f"needs {rep.devices} devices, the cluster has {cluster.devices}"
        if problem is None and fixed:  # every step-time, memory and rule pruning leaves its reason: the fix removed it
            out.append(Rejected(fam, None, f"not searched: --fix {pinned} leaves no strategy of this family on this cluster"))
            continue
        out.append(Rejected(fam, None, f"not applicable: {problem or 'the search space has no strategy of this family here'}"))
    return tuple(out)


def nothing_fits(smallest: dict[str, Estimate], cluster: Cluster, fixed: dict,
                 needed: Optional[tuple[int, Strategy]] = None) -> InputError:
    """The recipe fits nowhere: the leanest plan's need, and the fewest nodes that do fit (a plan
    found there, planner._nodes_needed) or the knobs that save memory."""
    if not smallest:
        return InputError("--fix" if fixed else "recipe", fixed or None, "no valid strategy for this model and cluster")
    e = min(smallest.values(), key=lambda x: x.memory_per_device_bytes)
    cap = cluster.device.memory_bytes * e.strategy.threads
    need = e.memory_per_device_bytes
    s = e.strategy
    hints = []
    if needed is not None:
        nodes, there = needed
        hints.append(f"{nodes} nodes ({nodes * cluster.devices_per_node} devices) of this kind, where {there.to_text()} fits")
    else:
        hints.append("more devices")
    if s.recompute is not Recompute.FULL:
        hints.append("recompute=full")
    if s.zero < 3 and s.dp > 1:
        hints.append("zero=3")
    if (s.microbatch or 2) > 1:
        hints.append("a smaller micro-batch")
    hints.append("devices with more memory")
    return InputError("cluster", cluster.name,
                      f"the recipe fits nowhere: the leanest plan ({s.to_text()}) needs {_gb(need)} per device > "
                      f"{_gb(cap)}; try {', '.join(hints)}")
