"""Apply a synchronous-or-local-SGD strategy to a built model, in the documented order.

  1. pipeline split           (pipeline.apply_pipeline_split)
  2. tensor parallel          (tensor_parallel.apply_tensor_parallel) / feature partition (features)
  3. activation checkpointing (checkpointing.apply_activation_checkpointing)
  4. FSDP2                    (sharding.apply_fsdp)
  5. materialization          (materialize.apply_materialization): a model built on the meta
                              device (the built-in families) is allocated and initialised
                              here, each rank drawing only what steps 1-4 left it
  6. DDP                      (data_parallel.apply_ddp; it needs real weights to broadcast)
  7. optimizer                (optim.build_optimizer / sharding.zero1_optimizer)
  8. pipeline schedule        (pipeline.apply_pipeline_schedule), over the wrapped chunks

Local SGD (sync=async) takes steps 1-3 and 5 only: its replicas never sync gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Optional

import torch
from torch import nn

from autopar.models import ModelDef
from autopar.models.init import ParamInit, init_table
from autopar.runtime import features, pipeline
from autopar.runtime.checkpointing import apply_activation_checkpointing
from autopar.runtime.data_parallel import apply_ddp
from autopar.runtime.materialize import apply_materialization, on_meta
from autopar.runtime.mesh import RankContext, dp_group, dp_mesh
from autopar.runtime.optim import build_optimizer
from autopar.runtime.precision import PrecisionPlan
from autopar.runtime.sharding import apply_fsdp, uses_fsdp, zero1_optimizer
from autopar.runtime.tensor_parallel import apply_tensor_parallel
from autopar.spec.enums import DataPartition, Recompute
from autopar.spec.recipe import TrainingSpec
from autopar.spec.strategy import Strategy

Gatherer = Callable[[torch.Tensor], torch.Tensor]


class GradSync(str, Enum):
    """Who synchronises gradients, which decides how micro-batches skip it."""

    NONE = "none"
    DDP = "ddp"
    FSDP = "fsdp"


@dataclass
class Parallelized:
    chunks: list[pipeline.Chunk]  # this rank's model chunks, after every wrapper
    optimizer: torch.optim.Optimizer
    grad_sync: GradSync
    schedule: Optional[Any] = None  # a torch.distributed.pipelining schedule
    loss_parallel: bool = False  # the loss must run under loss_parallel() (vocab-parallel head)
    feature_slice: Optional[features.FeatureSlice] = None
    after_backward: list[Callable[[], None]] = field(default_factory=list)
    gatherers: dict[str, Gatherer] = field(default_factory=dict)  # param name -> full tensor
    applied: list[str] = field(default_factory=list)


def parallelize(mdef: ModelDef, s: Strategy, ctx: RankContext, training: TrainingSpec, precision: PrecisionPlan) -> Parallelized:
    """`mdef.module` may be on the meta device (then it must have an `init` scheme): it is
    parallelized there and materialized with this rank's shards only."""
    applied: list[str] = []
    model = mdef.module
    table = _init_table(mdef)
    ties = pipeline.cross_stage_ties(model, s) if s.pp > 1 else []
    chunks = _split(model, s, ctx, applied)
    loss_parallel, fslice, gatherers = _partition(mdef, s, ctx, chunks, applied)
    wrapped = sum(apply_activation_checkpointing(c.module, s.recompute) for c in chunks)
    if s.recompute is not Recompute.NONE:
        applied.append(f"recompute({s.recompute.value}, {wrapped} modules)")
    grad_sync = _grad_sync(s)
    if grad_sync is GradSync.FSDP:
        _fsdp(chunks, s, ctx, precision, applied)
    if table is not None:
        offsets = {f"{mdef.feature_layer}.weight": (0, fslice.lo)} if fslice else None
        drawn = sum(apply_materialization(c.module, table, training.seed, ctx.device, offsets) for c in chunks)
        total = sum(math.prod(i.shape) for name, i in table.items() if i.key == name)
        applied.append(f"meta_init({mdef.init.value}, this rank drew {drawn:,} of {total:,} values)")
    if grad_sync is GradSync.DDP:
        chunks = _ddp(chunks, ctx, applied)
    params = [p for c in chunks for p in c.module.parameters()]
    if grad_sync is GradSync.DDP and s.zero == 1:
        optimizer = zero1_optimizer(params, training, dp_group(ctx.mesh, ctx.dims))
        applied.append("zero1(ZeroRedundancyOptimizer)")
    else:
        optimizer = build_optimizer(params, training)
    par = Parallelized(chunks, optimizer, grad_sync, loss_parallel=loss_parallel, feature_slice=fslice, gatherers=gatherers, applied=applied)
    if s.pp > 1:
        _add_pipeline(par, mdef, s, ctx, ties, training)
    return par


def _split(model: nn.Module, s: Strategy, ctx: RankContext, applied: list[str]) -> list[pipeline.Chunk]:
    if s.pp == 1:
        return [pipeline.Chunk(0, model)]
    chunks = pipeline.apply_pipeline_split(model, s, ctx.coords.pp)
    layout = "/".join(str(len(r)) for r in pipeline.layer_ranges(len(model.layers), s.pp * s.virtual_stages, s.stages))
    applied.append(f"pipeline(pp={s.pp}, {s.schedule.value}, virtual_stages={s.virtual_stages}, layers {layout})")
    return chunks


def _partition(mdef: ModelDef, s: Strategy, ctx: RankContext, chunks, applied) -> tuple[bool, Optional[features.FeatureSlice], dict[str, Gatherer]]:
    """Tensor parallel, or the feature partition: the techniques that split a layer's weights."""
    loss_parallel = False
    if s.tp > 1:
        for chunk in chunks:
            loss_parallel |= apply_tensor_parallel(chunk.module, ctx.mesh["tp"], mdef.tp_plan or {}, s.sequence_parallel)
        applied.append(f"tensor_parallel(tp={s.tp}{', sequence_parallel' if s.sequence_parallel else ''}{', loss_parallel' if loss_parallel else ''})")
    if s.data_partition is not DataPartition.FEATURES or s.dp == 1:
        return loss_parallel, None, {}
    group = dp_group(ctx.mesh, ctx.dims)
    fslice = features.apply_feature_partition(mdef.module, mdef.feature_layer, ctx.coords.dp, s.dp, group)
    applied.append(f"features(dp={s.dp}, columns {fslice.lo}:{fslice.hi} of {mdef.feature_layer})")
    return loss_parallel, fslice, {f"{mdef.feature_layer}.weight": lambda t: features.gather_columns(t, fslice, group)}


def _init_table(mdef: ModelDef) -> Optional[dict[str, ParamInit]]:
    """The per-parameter initialisation of a meta-device model (None: already materialized)."""
    if not on_meta(mdef.module):
        return None
    if mdef.init is None:
        raise ValueError(f"{mdef.name} is on the meta device but has no initialisation scheme; build it on the device")
    return init_table(mdef.module, mdef.init)


def _grad_sync(s: Strategy) -> GradSync:
    if s.dp == 1 or s.is_async or s.data_partition is DataPartition.FEATURES:
        return GradSync.NONE
    return GradSync.FSDP if uses_fsdp(s.zero, s.tp, s.pp, s.dp) else GradSync.DDP


def _fsdp(chunks, s: Strategy, ctx: RankContext, precision: PrecisionPlan, applied) -> None:
    mesh = dp_mesh(ctx.mesh, ctx.dims)
    for chunk in chunks:
        apply_fsdp(chunk.module, mesh, s.zero, precision.fsdp_policy())
    kind = "hsdp(replicas, zero0)" if ctx.dims.dp_as_replicas else f"fsdp(zero{3 if s.zero == 3 else 2})"
    applied.append(f"{kind}(dp={s.dp})")


def _ddp(chunks, ctx: RankContext, applied) -> list[pipeline.Chunk]:
    group = dp_group(ctx.mesh, ctx.dims)
    applied.append(f"ddp(dp={ctx.dims.dp})")
    return [pipeline.Chunk(c.stage, apply_ddp(c.module, group, ctx.device)) for c in chunks]


def _add_pipeline(par: Parallelized, mdef: ModelDef, s: Strategy, ctx: RankContext, ties, training: TrainingSpec) -> None:
    n_micro = s.num_microbatches(training.global_batch)
    par.schedule = pipeline.apply_pipeline_schedule(par.chunks, s, n_micro, mdef.loss, ctx.mesh["pp"].get_group(), ctx.device)
    if ties:
        groups = pipeline.tie_groups(ties, ctx.dims, ctx.coords.dp, ctx.coords.tp)
        par.after_backward.append(pipeline.tied_gradient_sync(par.chunks, ties, groups))
        par.applied.append(f"tied-weight gradient all-reduce across stages ({', '.join(t.names[0] for t in ties)})")
