"""Pipeline parallelism with torch.distributed.pipelining and hand-cut stages.

The model's `layers` are cut into pp * virtual_stages chunks of consecutive blocks,
`strategy.stages` layers each: the layout the cost model priced (CostModel.with_stages
writes it in before a run; the runtime has no layout of its own).
The modules registered before `layers` (embedding, stem) join the first chunk, those
after it (head) the last, so a pipelined model's forward must run
pre-modules -> layers -> post-modules; the built-in families do. Stage s lives on
pipeline rank s % pp (the looped layout of Interleaved1F1B; one stage per rank for
GPipe and 1F1B). Chunks keep the model's parameter names (`layers.7.attn.q.weight`).

Schedules: gpipe -> ScheduleGPipe, 1f1b -> Schedule1F1B, interleaved ->
ScheduleInterleaved1F1B (Narayanan et al. 2021). Each micro-batch's loss is the
recipe's mean loss and the schedule scales gradients by 1/num_microbatches, so
gradients equal the whole batch's.

Weights tied across stages (GPT's embedding and head) live on the first and last
stage: after backward their gradients are all-reduced between those two ranks, as
Megatron-LM does for its word embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B
from torch.distributed.tensor import DTensor

from autopar.models.init import tied_parameters
from autopar.runtime.mesh import ParallelDims, global_rank
from autopar.runtime.names import clean_name
from autopar.runtime.parallelized import Chunk, Parallelized
from autopar.spec.enums import Schedule
from autopar.spec.strategy import Strategy


def apply(par: Parallelized) -> None:
    """Cut the model into this pipeline rank's chunks; remember weights tied across stages."""
    s = par.strategy
    if s.pp == 1:
        return
    model = par.mdef.module
    par.ties = cross_stage_ties(model, s)
    par.chunks = apply_pipeline_split(model, s, par.ctx.coords.pp)
    layout = "/".join(str(len(r)) for r in layer_ranges(len(model.layers), s.pp * s.virtual_stages, s.stages))
    par.applied.append(f"pipeline(pp={s.pp}, {s.schedule.value}, virtual_stages={s.virtual_stages}, layers {layout})")


def finish(par: Parallelized) -> None:
    """The schedule over the wrapped chunks, and the tied weights' gradient all-reduce."""
    s = par.strategy
    if s.pp == 1:
        return
    ctx = par.ctx
    n_micro = s.num_microbatches(par.training.global_batch)
    par.schedule = apply_pipeline_schedule(par.chunks, s, n_micro, par.mdef.loss, ctx.mesh["pp"].get_group(), ctx.device)
    if par.ties:
        groups = tie_groups(par.ties, ctx.dims, ctx.coords.dp, ctx.coords.tp)
        par.after_backward.append(tied_gradient_sync(par.chunks, par.ties, groups))
        par.applied.append(f"tied-weight gradient all-reduce across stages ({', '.join(t.names[0] for t in par.ties)})")


class StageModule(nn.Module):
    """Consecutive top-level pieces of a model: pre-modules, a slice of `layers`, post-modules."""

    def __init__(self, pieces: list[tuple[str, nn.Module]]):
        super().__init__()
        self._order = [name for name, _ in pieces]
        for name, module in pieces:
            self.register_module(name, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self._order:
            piece = getattr(self, name)
            if isinstance(piece, nn.ModuleDict):
                for block in piece.values():
                    x = block(x)
            else:
                x = piece(x)
        return x


def layer_ranges(n_layers: int, n_stages: int, stages: Optional[tuple[int, ...]]) -> list[range]:
    """The blocks of each stage; `stages` must be the cost model's layout (or the user's)."""
    if stages is None or len(stages) != n_stages or sum(stages) != n_layers:
        raise ValueError(f"pipeline needs stages= with {n_stages} stages holding {n_layers} layers, got {stages}; "
                         "CostModel.with_stages writes the priced layout in")
    sizes = list(stages)
    starts = [sum(sizes[:i]) for i in range(n_stages)]
    return [range(start, start + size) for start, size in zip(starts, sizes)]


def local_stages(strategy: Strategy, pp_rank: int) -> list[int]:
    return [pp_rank + k * strategy.pp for k in range(strategy.virtual_stages)]


def apply_pipeline_split(model: nn.Module, strategy: Strategy, pp_rank: int) -> list[Chunk]:
    """This pipeline rank's chunks of `model` (which it may discard afterwards)."""
    n_stages = strategy.pp * strategy.virtual_stages
    ranges = layer_ranges(len(model.layers), n_stages, strategy.stages)
    names = [name for name, _ in model.named_children()]
    cut = names.index("layers")
    chunks = []
    for s in local_stages(strategy, pp_rank):
        pieces = [(n, getattr(model, n)) for n in names[:cut]] if s == 0 else []
        pieces.append(("layers", nn.ModuleDict({str(i): model.layers[i] for i in ranges[s]})))
        pieces += [(n, getattr(model, n)) for n in names[cut + 1 :]] if s == n_stages - 1 else []
        chunks.append(Chunk(s, StageModule(pieces)))
    return chunks


# ------------------------------------------------------------------ tied weights


@dataclass(frozen=True)
class CrossStageTie:
    names: tuple[str, ...]  # the parameter's names, as in the whole model
    stages: tuple[int, ...]  # the stage holding each name


def cross_stage_ties(model: nn.Module, strategy: Strategy) -> list[CrossStageTie]:
    n_stages = strategy.pp * strategy.virtual_stages
    ranges = layer_ranges(len(model.layers), n_stages, strategy.stages)
    names = [name for name, _ in model.named_children()]
    cut = names.index("layers")

    def stage_of(param: str) -> int:
        top, _, rest = param.partition(".")
        if top == "layers":
            layer = int(rest.partition(".")[0])
            return next(s for s, r in enumerate(ranges) if layer in r)
        return 0 if names.index(top) < cut else n_stages - 1

    ties = [CrossStageTie(tuple(g), tuple(stage_of(n) for n in g)) for g in tied_parameters(model)]
    return [t for t in ties if len(set(t.stages)) > 1]


def tie_groups(ties: list[CrossStageTie], dims: ParallelDims, dp: int, tp: int) -> list[Optional[dist.ProcessGroup]]:
    """One process group per tie joining its pipeline ranks at this rank's (dp, tp) coordinates.

    Every rank creates every group (dist.new_group is collective) and keeps its own."""
    mine: list[Optional[dist.ProcessGroup]] = []
    for tie in ties:
        pp_ranks = sorted({s % dims.pp for s in tie.stages})
        own = None
        for d in range(dims.dp):
            for t in range(dims.tp):
                group = dist.new_group([global_rank(dims, p, d, t) for p in pp_ranks])
                own = group if (d, t) == (dp, tp) else own
        mine.append(own)
    return mine


def tied_gradient_sync(chunks: list[Chunk], ties: list[CrossStageTie], groups: list) -> Callable[[], None]:
    """A function that all-reduces the gradients of this rank's copies of tied weights."""
    pairs = []
    for tie, group in zip(ties, groups):
        for chunk in chunks:
            for name, p in chunk.module.named_parameters():
                if clean_name(name) in tie.names:
                    pairs.append((p, group))

    def sync() -> None:
        with torch.no_grad():
            for p, group in pairs:
                if p.grad is not None:
                    p.grad = _like_param(p.grad, p)
                    dist.all_reduce(_local(p.grad), group=group)

    return sync


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _like_param(grad: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The gradient laid out as its parameter: DTensor's vocab-parallel embedding backward
    returns a Replicate gradient for a Shard(0) weight; both copies must be cut alike."""
    if isinstance(grad, DTensor) and grad.placements != p.placements:
        return grad.redistribute(grad.device_mesh, p.placements)
    return grad


# ------------------------------------------------------------------ schedule


def apply_pipeline_schedule(chunks: list[Chunk], strategy: Strategy, n_microbatches: int, loss_fn, group, device: torch.device):
    """Wrap each (already parallelized) chunk in a PipelineStage and build the plan's schedule."""
    n_stages = strategy.pp * strategy.virtual_stages
    stages = [PipelineStage(c.module, c.stage, n_stages, device, group=group) for c in chunks]
    if strategy.schedule is Schedule.GPIPE:
        return ScheduleGPipe(stages[0], n_microbatches, loss_fn=loss_fn)
    if strategy.schedule is Schedule.ONE_F_ONE_B:
        return Schedule1F1B(stages[0], n_microbatches, loss_fn=loss_fn)
    return ScheduleInterleaved1F1B(stages, n_microbatches, loss_fn=loss_fn)
