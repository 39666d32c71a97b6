"""The device mesh of a strategy: dimensions (pp, dp_replicate, dp_shard, cp, tp), outermost first.

Tensor parallelism is innermost so its ranks are neighbours (one node), pipeline
stages outermost, as in torchtitan and Megatron-LM. The data-parallel degree sits
in `dp_shard` (FSDP/DDP over it), except for HSDP (`dp_shard=K`: K ranks shard,
dp / K replicas in `dp_replicate`) and for zero=0 with tensor or pipeline
parallelism, which FSDP2 runs as HSDP with every dp rank a replica (shard size 1)
because DDP cannot be used there (techniques/data/apply.py). Context parallelism (cp)
sits between data and tensor parallelism, as in torchtitan: its ranks hold pieces of the
same samples, so gradients are averaged over dp x cp ranks (the flattened dp_cp group).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from autopar.spec.strategy import Strategy

DIM_NAMES = ("pp", "dp_replicate", "dp_shard", "cp", "tp")


@dataclass(frozen=True)
class ParallelDims:
    pp: int
    dp: int
    tp: int
    replicas: int = 1  # HSDP replicas: dp / dp_shard, or dp for zero=0 with tensor or pipeline parallel
    cp: int = 1

    @classmethod
    def from_strategy(cls, strategy: Strategy) -> "ParallelDims":
        s = strategy
        replicas = s.dp if s.zero == 0 and s.dp > 1 and (s.tp > 1 or s.pp > 1) else s.dp // s.shard_size
        return cls(s.pp, s.dp, s.tp, replicas, s.cp)

    @property
    def dp_as_replicas(self) -> bool:
        """dp realised (partly) by HSDP replicas: FSDP2 on the 2-D (replicate, shard) mesh."""
        return self.replicas > 1

    @property
    def world(self) -> int:
        return self.pp * self.dp * self.cp * self.tp

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return (self.pp, self.replicas, self.dp // self.replicas, self.cp, self.tp)


@dataclass(frozen=True)
class Coords:
    """This rank's place in the mesh."""

    pp: int = 0
    dp: int = 0
    tp: int = 0
    cp: int = 0


@dataclass(frozen=True)
class RankContext:
    """Where this process sits: the mesh (None for one process), its coordinates, its device."""

    dims: ParallelDims
    mesh: Optional[DeviceMesh]
    coords: Coords
    device: torch.device

    @classmethod
    def create(cls, dims: ParallelDims, device: torch.device) -> "RankContext":
        mesh = build_mesh(dims, device.type)
        return cls(dims, mesh, coords(mesh, dims), device)


def build_mesh(dims: ParallelDims, device_type: str) -> Optional[DeviceMesh]:
    """The world mesh, or None for a single process."""
    if dims.world == 1:
        return None
    world = dist.get_world_size()
    if world != dims.world:
        raise RuntimeError(f"pp({dims.pp}) * dp({dims.dp}) * cp({dims.cp}) * tp({dims.tp}) = {dims.world} != WORLD_SIZE({world})")
    return init_device_mesh(device_type, dims.shape, mesh_dim_names=DIM_NAMES)


def coords(mesh: Optional[DeviceMesh], dims: ParallelDims) -> Coords:
    if mesh is None:
        return Coords()
    replica, shard = mesh.get_local_rank("dp_replicate"), mesh.get_local_rank("dp_shard")
    return Coords(pp=mesh.get_local_rank("pp"), dp=replica * dims.shape[2] + shard, tp=mesh.get_local_rank("tp"),
                  cp=mesh.get_local_rank("cp"))


def dp_mesh(mesh: DeviceMesh, dims: ParallelDims) -> DeviceMesh:
    """The mesh FSDP2 shards over: 1-D (dp_shard, with cp: dp_shard x cp flattened), or 2-D
    (replicate, shard) for HSDP."""
    shard = _shard_dim(mesh, dims)
    return mesh["dp_replicate", shard] if dims.dp_as_replicas else mesh[shard]


def _shard_dim(mesh: DeviceMesh, dims: ParallelDims) -> str:
    """'dp_shard', or with context parallelism the flattened (dp_shard, cp) dimension: the ranks
    holding pieces of the same samples average their gradients too."""
    if dims.cp == 1:
        return "dp_shard"
    if "dp_shard_cp" not in (mesh._get_root_mesh().mesh_dim_names or ()):
        mesh["dp_shard", "cp"]._flatten("dp_shard_cp")
    return "dp_shard_cp"


def dp_group(mesh: DeviceMesh, dims: ParallelDims) -> dist.ProcessGroup:
    """The process group of the data-parallel ranks (DDP, ZeRO-1, parameter averaging); with
    context parallelism, of the dp x cp ranks."""
    if dims.dp_as_replicas:
        raise RuntimeError("dp is realised as HSDP replicas here; use dp_mesh")
    return mesh[_shard_dim(mesh, dims)].get_group()


def global_rank(dims: ParallelDims, pp: int, dp: int, tp: int, cp: int = 0) -> int:
    """Rank of mesh coordinates (pp, dp, cp, tp) in the row-major layout of DIM_NAMES."""
    return ((pp * dims.dp + dp) * dims.cp + cp) * dims.tp + tp
