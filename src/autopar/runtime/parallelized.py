"""The model of one rank while the techniques are applied to it, and after.

`parallelize` (runtime/parallelize.py) creates a `Parallelized` holding the built model as
one chunk, then hands it to each active technique's `apply(par)` in the fixed order of
autopar.techniques.TECHNIQUES, then to each `finish(par)` (what needs the optimizer or
the final wrappers, e.g. the pipeline schedule). A technique reads the strategy and the
rank's place from it and records what it did in `applied`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Optional

import torch
from torch import nn

from autopar.models import ModelDef, synthetic_batch
from autopar.models.init import ParamInit, init_table
from autopar.profile.facts import ModelFacts
from autopar.runtime.materialize import apply_materialization, on_meta
from autopar.runtime.mesh import RankContext
from autopar.runtime.names import clean_name
from autopar.runtime.precision import PrecisionPlan
from autopar.spec.recipe import TrainingSpec
from autopar.spec.strategy import Strategy

Gatherer = Callable[[torch.Tensor], torch.Tensor]


class GradSync(str, Enum):
    """Who synchronises gradients, which decides how micro-batches skip it."""

    NONE = "none"
    DDP = "ddp"
    FSDP = "fsdp"


@dataclass(frozen=True)
class LocalSlice:
    """A plain local tensor holding [lo, hi) of its full tensor's dimension `dim` (of `size`)."""

    dim: int
    lo: int
    hi: int
    size: int


@dataclass(frozen=True)
class Chunk:
    stage: int  # pipeline stage index, 0 .. pp * virtual_stages - 1 (0 without a pipeline)
    module: nn.Module


@dataclass
class Parallelized:
    mdef: ModelDef
    facts: ModelFacts  # what the profiler found: blocks, how a pipeline cuts them
    strategy: Strategy
    ctx: RankContext
    training: TrainingSpec
    precision: PrecisionPlan
    steps: int  # steps the run trains (local SGD averages after the last)
    chunks: list[Chunk]  # this rank's model chunks, after every wrapper so far
    init: Optional[dict[str, ParamInit]] = None  # meta-device model: how each parameter is drawn (None: real already)
    grad_sync: GradSync = GradSync.NONE
    optimizer: Optional[torch.optim.Optimizer] = None
    schedule: Optional[Any] = None  # a torch.distributed.pipelining schedule
    pipe: Optional[Any] = None  # a traced torch.distributed.pipelining Pipe (graph-split models)
    offload_policy: Optional[Any] = None  # FSDP2 OffloadPolicy (techniques/offload/apply.py), passed to fully_shard
    loss_parallel: bool = False  # the loss must run under loss_parallel() (vocab-parallel head)
    feature_slice: Optional[Any] = None  # techniques.features.apply.FeatureSlice
    param_offsets: dict[str, tuple[int, ...]] = field(default_factory=dict)  # plain local tensors cut from a full one
    after_backward: list[Callable[[], None]] = field(default_factory=list)
    after_step: list[Callable[[int], None]] = field(default_factory=list)
    gatherers: dict[str, Gatherer] = field(default_factory=dict)  # param name -> full tensor
    local_slices: dict[str, LocalSlice] = field(default_factory=dict)  # param name -> the part its plain local tensor holds
    ties: list = field(default_factory=list)  # weights tied across pipeline stages
    seq_positions: Optional[torch.Tensor] = None  # context parallelism: the sequence positions this rank's inputs hold
    dp_ignored: list[str] = field(default_factory=list)  # parameters data parallelism leaves alone (expert-parallel stacks)
    applied: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, mdef: ModelDef, facts: ModelFacts, s: Strategy, ctx: RankContext, training: TrainingSpec,
              precision: PrecisionPlan, steps: int) -> "Parallelized":
        meta = on_meta(mdef.module)
        if meta and mdef.init is None:
            raise ValueError(f"{mdef.name} is on the meta device but has no initialisation scheme; build it on the device")
        return cls(mdef, facts, s, ctx, training, precision, steps, [Chunk(0, mdef.module)],
                   init_table(mdef.module, mdef.init) if meta else None)

    def micro_batch(self) -> tuple[torch.Tensor, ...]:
        """One micro-batch of this rank's inputs (shapes for tracing; values synthetic)."""
        rows = self.training.global_batch // self.strategy.dp // self.strategy.num_microbatches(self.training.global_batch)
        dtype = self.precision.param_dtype
        return synthetic_batch(self.mdef, rows, self.training.seed, self.ctx.device, float_dtype=dtype)[0]

    def materialize(self) -> None:
        """Allocate a meta-device model's local tensors and draw only them (runtime/materialize.py);
        once, after the techniques that shard (pipeline, tensor, features, FSDP) and before DDP,
        which needs real weights to broadcast."""
        if self.init is None:
            return
        table, self.init = self.init, None
        seed, device = self.training.seed, self.ctx.device
        drawn = sum(apply_materialization(c.module, table, seed, device, self.param_offsets) for c in self.chunks)
        total = sum(math.prod(i.shape) for name, i in table.items() if i.key == name)
        self.applied.append(f"meta_init({self.mdef.init.value}, this rank drew {drawn:,} of {total:,} values)")

    def named_dp_ignored(self, module: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """(name as `module` spells it, parameter) of the dp_ignored parameters `module` holds
        (looked up by name: materialization replaces the parameter objects)."""
        wanted = set(self.dp_ignored)
        return [(n, p) for n, p in module.named_parameters() if clean_name(n) in wanted]

    @property
    def parameters(self) -> list[nn.Parameter]:
        return [p for c in self.chunks for p in c.module.parameters()]
