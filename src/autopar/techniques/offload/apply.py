"""Host offload with FSDP2's CPUOffloadPolicy: the sharded parameters, their gradients and
the optimizer states stay in host memory; each block's shard is copied to the device
before its all-gather, gradients are copied back after the reduce-scatter, and the
optimizer steps on the host. techniques/data/apply.py passes the policy to fully_shard."""

from __future__ import annotations

from torch.distributed.fsdp import CPUOffloadPolicy

from autopar.runtime.parallelized import Parallelized


def apply(par: Parallelized) -> None:
    par.offload_policy = CPUOffloadPolicy(pin_memory=par.ctx.device.type == "cuda")
    par.applied.append("offload(FSDP2 CPUOffloadPolicy: parameter, gradient and optimizer-state shards in host memory)")
