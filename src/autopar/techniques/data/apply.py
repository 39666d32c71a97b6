"""Data parallelism: DDP, and ZeRO (Rajbhandari et al. 2020) with FSDP2 and ZeroRedundancyOptimizer.

  zero=0  DistributedDataParallel: gradients all-reduced in 25 MB buckets under backward.
How each ZeRO stage is realised over the dp ranks:
  zero=1  DDP + ZeroRedundancyOptimizer: optimizer states sharded; gradients all-reduced
          (DDP); each rank updates its shard and broadcasts it.
  zero=2  FSDP2 fully_shard(reshard_after_forward=False): gradients (reduce-scattered) and
          optimizer states sharded; parameters all-gathered once per step and kept from
          forward through backward.
  zero=3  FSDP2 fully_shard(reshard_after_forward=True): parameters sharded too, gathered
          again for backward.
With tensor parallelism (DTensor parameters, which DDP and ZeroRedundancyOptimizer
cannot take) or pipeline parallelism (DDP's bucket rebuilding fails under
torch.distributed.pipelining's per-micro-batch backward: "rebuilt parameter indices
size is not same as original model parameters size", torch 2.13), data parallelism is
always FSDP2 over the dp mesh dimension: zero=0 as HSDP with dp replicas and shard
size 1 (plain replication, gradients all-reduced), zero=1 and 2 as zero=2 above,
zero=3 as above.

  dp_shard=K  HSDP: fully_shard on the 2-D (dp_replicate, dp_shard) mesh; states
              sharded over K ranks (one node), gradients reduce-scattered inside the
              shard group and all-reduced across the dp / K replicas.
  offload     zero=3 with FSDP2's CPUOffloadPolicy (techniques/offload): also for one
              replica, on a 1-rank mesh.

fully_shard wraps each block of the model's stack (ModelFacts.blocks; one all-gather
per block, overlapped with the previous block's compute) and then the chunk's root
(embeddings, head).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel as DDP

from autopar.profile.structure import stack_blocks
from autopar.runtime.mesh import dp_group, dp_mesh
from autopar.runtime.optim import optimizer_class
from autopar.runtime.parallelized import Chunk, GradSync, Parallelized
from autopar.spec.enums import DataPartition
from autopar.spec.recipe import TrainingSpec
from autopar.spec.strategy import Strategy

BUCKET_CAP_MB = 25  # PyTorch's default; the size Li et al. (VLDB 2020) found best on their clusters


def grad_sync(s: Strategy) -> GradSync:
    """Who synchronises gradients: nobody for one replica, local SGD, IST or a feature partition."""
    if s.offload:
        return GradSync.FSDP
    if s.dp * s.cp == 1 or s.is_async or s.subnet or s.data_partition is DataPartition.FEATURES:
        return GradSync.NONE
    return GradSync.FSDP if uses_fsdp(s) else GradSync.DDP


def apply(par: Parallelized) -> None:
    """FSDP2 over the dp mesh (then materialize the shards), or materialize then DDP."""
    s, ctx = par.strategy, par.ctx
    par.grad_sync = grad_sync(s)
    if par.grad_sync is not GradSync.NONE and par.facts.batch_norms:
        par.applied.append(sync_batch_norm(par, dp_group(ctx.mesh, ctx.dims)))
    if par.grad_sync is GradSync.FSDP:
        mesh = dp_mesh(ctx.mesh, ctx.dims) if ctx.mesh is not None else init_device_mesh(ctx.device.type, (1,), mesh_dim_names=("dp_shard",))
        for chunk in par.chunks:
            ignored = {p for _, p in par.named_dp_ignored(chunk.module)}
            apply_fsdp(chunk.module, mesh, s.zero, par.precision.fsdp_policy(), par.facts.blocks, par.offload_policy, ignored)
        stage = f"zero{3 if s.zero == 3 else 2}"
        if s.dp_shard is not None:
            kind = f"hsdp({stage}, shard={s.dp_shard}, replicas={ctx.dims.replicas})"
        else:
            kind = "hsdp(replicas, zero0)" if ctx.dims.dp_as_replicas else f"fsdp({stage})"
        par.applied.append(f"{kind}(dp={s.dp}{f' x cp={s.cp}' if s.cp > 1 else ''})")
        par.materialize()
    elif par.grad_sync is GradSync.DDP:
        par.materialize()  # DDP broadcasts rank 0's weights: they must exist
        group = dp_group(ctx.mesh, ctx.dims)
        par.applied.append(f"ddp(dp={ctx.dims.dp}{f' x cp={s.cp}' if s.cp > 1 else ''})")
        par.chunks = [Chunk(c.stage, apply_ddp(c.module, group, ctx.device, ignored=[n for n, _ in par.named_dp_ignored(c.module)]))
                      for c in par.chunks]
        if s.zero == 1:
            par.optimizer = zero1_optimizer(par.parameters, par.training, group)
            par.applied.append("zero1(ZeroRedundancyOptimizer)")


def sync_batch_norm(par: Parallelized, group) -> str:
    """BatchNorm over data-parallel replicas: SyncBatchNorm where PyTorch has it (CUDA/XPU),
    else each replica's own statistics (the profile notes say so)."""
    n = par.facts.batch_norms
    if par.ctx.device.type not in ("cuda", "xpu"):
        return f"batch_norm({n} layers, statistics per replica: SyncBatchNorm needs CUDA/XPU)"
    par.chunks = [Chunk(c.stage, nn.SyncBatchNorm.convert_sync_batchnorm(c.module, group)) for c in par.chunks]
    return f"sync_batch_norm({n} layers over dp={par.strategy.dp})"


def apply_ddp(module: nn.Module, group, device: torch.device, bucket_cap_mb: int = BUCKET_CAP_MB,
              ignored: Sequence[str] = ()) -> DDP:
    """Gradients all-reduced in buckets while backward runs. Buffers of the built-in models
    are constants (causal masks, rotary tables), so they are not re-broadcast every forward.
    With gradient accumulation or a pipeline only the last micro-batch's backward syncs.
    `ignored` parameters (names in `module`) are neither broadcast nor reduced."""
    device_ids: Optional[list[int]] = [device.index] if device.type == "cuda" else None
    if ignored:
        DDP._set_params_and_buffers_to_ignore_for_model(module, list(ignored))
    return DDP(module, device_ids=device_ids, process_group=group, bucket_cap_mb=bucket_cap_mb, forward_sync_buffers=False)


def uses_fsdp(s: Strategy) -> bool:
    """Whether data parallelism is realised with FSDP2 (else DDP)."""
    return s.offload or s.dp * s.cp > 1 and (s.zero >= 2 or s.tp > 1 or s.pp > 1)


def apply_fsdp(module: nn.Module, mesh: DeviceMesh, zero: int, mp_policy: Optional[MixedPrecisionPolicy],
               blocks: Optional[Sequence[str]] = None, offload_policy: Optional[OffloadPolicy] = None,
               ignored: Optional[set] = None) -> nn.Module:
    """fully_shard each of `blocks` this module holds (default: the blocks of the stacks
    profile/structure.py finds), then the root; in place (FSDP2 swaps the class). `ignored`
    parameters stay as they are (not sharded, not reduced)."""
    reshard = zero == 3
    kwargs = {"mesh": mesh, "reshard_after_forward": reshard}
    if ignored:
        kwargs["ignored_params"] = ignored
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    if offload_policy is not None:
        kwargs["offload_policy"] = offload_policy
    held = dict(module.named_modules())
    for name in stack_blocks(module) if blocks is None else blocks:
        if name in held:
            fully_shard(held[name], **kwargs)
    fully_shard(module, **kwargs)
    return module


def zero1_optimizer(params: list[nn.Parameter], training: TrainingSpec, group) -> torch.optim.Optimizer:
    """ZeroRedundancyOptimizer over the dp group: each rank keeps 1/dp of the optimizer states."""
    cls, kwargs = optimizer_class(training)
    return ZeroRedundancyOptimizer(params, optimizer_class=cls, process_group=group, **kwargs)
