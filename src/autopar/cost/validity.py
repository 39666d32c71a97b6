"""Whether a strategy can run this model on this cluster; the message shows the arithmetic."""

from __future__ import annotations

from typing import Optional

from autopar.errors import InputError
from autopar.profile.types import ModelProfile, is_mlp_layer
from autopar.spec.cluster import Cluster
from autopar.spec.enums import DataPartition, Recompute, Schedule, Sync
from autopar.spec.strategy import Strategy


class InvalidStrategy(InputError):
    """A strategy that cannot run (as opposed to one that does not fit in memory)."""


def strategy_problem(s: Strategy, profile: ModelProfile, global_batch: int, cluster: Optional[Cluster]) -> Optional[str]:
    """The first reason `s` is invalid, or None. Pure; the planner's predicates use it too."""
    blocks = profile.pipeline_blocks
    if cluster is not None and s.devices > cluster.devices:
        return f"dp({s.dp}) * tp({s.tp}) * pp({s.pp}) * threads({s.threads}) = {s.devices} > devices({cluster.devices})"
    if global_batch % s.dp:
        return f"global_batch({global_batch}) % dp({s.dp}) = {global_batch % s.dp}; dp must divide the global batch"
    local = global_batch // s.dp
    if s.microbatch is not None and local % s.microbatch:
        return f"global_batch({global_batch}) / dp({s.dp}) = {local} samples per replica, not a multiple of microbatch({s.microbatch})"
    if s.tp > 1:
        bad = [u for u in profile.tp_units if u % s.tp]
        if not profile.tp_units:
            return f"tp({s.tp}): the model has no tensor-parallel Linear pairs; use tp=1"
        if bad:
            return f"tp({s.tp}) must divide every tensor-parallel width {list(profile.tp_units)} (heads, kv heads, hidden widths); {bad[0]} % {s.tp} = {bad[0] % s.tp}"
    chunks = s.pp * s.virtual_stages
    if chunks > 1 and not blocks:
        return f"pp({s.pp}): pipelining cuts the model's `layers` ModuleList; {profile.model} has none"
    if chunks > blocks and chunks > 1:
        return f"pp({s.pp}) * virtual_stages({s.virtual_stages}) = {chunks} > layers({blocks})"
    if s.virtual_stages > 1 and s.schedule is not Schedule.INTERLEAVED:
        return f"virtual_stages({s.virtual_stages}) > 1 needs schedule=interleaved, got {s.schedule.value}"
    if s.schedule is Schedule.INTERLEAVED and s.pp > 1 and s.virtual_stages < 2:
        return "schedule=interleaved needs virtual_stages >= 2"
    if s.pp > 1:
        m = s.num_microbatches(global_batch)
        if s.schedule is not Schedule.GPIPE and m < s.pp:  # torch.distributed.pipelining's 1F1B needs it
            return f"schedule {s.schedule.value} needs num_microbatches({m}) >= pp({s.pp}); lower microbatch or use gpipe"
        if s.schedule is Schedule.INTERLEAVED and m % s.pp:
            return f"interleaved schedule: micro-batches({m}) % pp({s.pp}) = {m % s.pp}; make the micro-batch count a multiple of pp"
    if s.stages is not None:
        if len(s.stages) != chunks:
            return f"stages lists {len(s.stages)} stages, but pp({s.pp}) * virtual_stages({s.virtual_stages}) = {chunks}"
        if sum(s.stages) != blocks:
            return f"stages sum to {sum(s.stages)} layers, the model has {blocks} ({' + '.join(map(str, s.stages))} != {blocks})"
    if s.sequence_parallel and s.tp == 1:
        return "sequence_parallel needs tp > 1"
    if s.recompute is Recompute.SELECTIVE and not any(l.stats.has_core for l in profile.layers):
        return "recompute=selective needs an attention core (a parameter-free submodule with a softmax); use recompute=full"
    return _technique_problem(s, profile, cluster)


def _technique_problem(s: Strategy, profile: ModelProfile, cluster: Optional[Cluster]) -> Optional[str]:
    if s.sync is Sync.ASYNC and (s.tp > 1 or s.pp > 1 or s.zero > 0):
        return f"sync=async runs whole replicas independently: needs tp=1, pp=1, zero=0 (got tp={s.tp}, pp={s.pp}, zero={s.zero})"
    if s.sync is Sync.ASYNC and s.dp == 1 and s.threads == 1:
        return "sync=async needs several workers: dp > 1 (local SGD) or threads > 1 (Hogwild)"
    if s.sync_every > 1 and s.sync is Sync.SYNC and not s.subnet:
        return f"sync_every({s.sync_every}) applies to sync=async or subnet=true"
    if s.data_partition is DataPartition.FEATURES:
        if profile.feature_dim is None:
            return "data_partition=features needs a model whose input layer is one Linear (wide_linear, mlp)"
        if s.tp > 1 or s.pp > 1 or s.zero > 0 or s.sync is Sync.ASYNC or s.subnet:
            return "data_partition=features combines only with dp (and threads)"
        if s.dp > profile.feature_dim:
            return f"dp({s.dp}) > input features({profile.feature_dim})"
    if s.subnet:
        if s.dp < 2:
            return "subnet=true partitions hidden units over dp workers: needs dp >= 2"
        if s.tp > 1 or s.pp > 1 or s.zero > 0:
            return "subnet=true combines only with dp"
        if not any(is_mlp_layer(l.stats) for l in profile.layers):
            return "subnet=true needs MLP layers (Linear pairs without attention) whose hidden units it partitions"
    if s.threads > 1 and cluster is not None and not cluster.device.shared_memory:
        return f"threads({s.threads}) > 1 needs devices that share memory (CPU cores); {cluster.device.name} does not"
    if s.threads > 1 and (s.tp > 1 or s.pp > 1):
        return "threads > 1 combines only with dp"
    return None


def check_strategy(s: Strategy, profile: ModelProfile, global_batch: int, cluster: Optional[Cluster], field: str = "--strategy") -> None:
    problem = strategy_problem(s, profile, global_batch, cluster)
    if problem is not None:
        raise InvalidStrategy(field, s.to_text(), problem)
