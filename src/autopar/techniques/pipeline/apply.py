"""Pipeline parallelism with torch.distributed.pipelining.

The model's blocks (ModelFacts.blocks, of its stack) are cut into pp * virtual_stages
chunks of consecutive blocks, `strategy.stages` blocks each: the layout the cost model
priced (CostModel.with_stages writes it in before a run; the runtime has no layout of
its own). How the cut is made was decided by the profiler (profile/structure.py):

  chain  the model's forward is its top-level children in order, the stack among them:
         stages are hand-cut StageModules holding the modules as they are (the modules
         before the stack join the first chunk, those after it the last), so tensor
         parallelism, FSDP and recomputation apply inside. Parameter names are kept
         (`layers.7.attn.q.weight`).
  graph  anything else (skip connections, blocks deep inside, keyword calls): the
         tracing front end, pipeline(model, mb_args, split_spec={first block of each
         stage: SplitPoint.BEGINNING}), splits the exported program; every tensor that
         crosses a cut is sent to the stage that reads it, so the forward is the
         model's own. One stage per rank (gpipe, 1f1b); the rules refuse the rest.

Stage s lives on pipeline rank s % pp (the looped layout of Interleaved1F1B; one stage
per rank for GPipe and 1F1B), or for ZB-V on rank s (s < pp) and 2 pp - 1 - s (the V). Schedules: gpipe -> ScheduleGPipe, 1f1b -> Schedule1F1B,
interleaved -> ScheduleInterleaved1F1B (Narayanan et al. 2021). Each micro-batch's loss
is the recipe's mean loss and the schedule scales gradients by 1/num_microbatches, so
gradients equal the whole batch's.

Weights tied across stages (an embedding and its head) live on several stages: after
backward their gradients are summed across those stages, as Megatron-LM does for its
word embeddings, so every copy takes the same update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.fx as fx
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B, SplitPoint, pipeline
from torch.distributed.pipelining.schedules import ScheduleDualPipeV, ScheduleInterleavedZeroBubble, ScheduleZBVZeroBubble
from torch.distributed.tensor import DTensor, Replicate

from autopar.errors import InputError
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
    model, facts = par.mdef.module, par.facts
    ranges = layer_ranges(facts.layers, s.pp * s.virtual_stages, s.stages)
    layout = "/".join(str(len(r)) for r in ranges)
    if facts.pipeline_split == "graph":
        par.ties = [CrossStageTie(tuple(g), ()) for g in tied_parameters(model)]
        par.pipe = traced_pipeline(model, [facts.blocks[r.start] for r in ranges[1:]], par.micro_batch())
        par.chunks = [Chunk(st, par.pipe.get_stage_module(st)) for st in local_stages(s, par.ctx.coords.pp)]
        cut = "traced: tensors crossing a cut are sent along"
    else:
        stack = facts.stacks[0]
        par.ties = cross_stage_ties(model, s, stack)
        par.chunks = apply_pipeline_split(model, s, par.ctx.coords.pp, stack)
        cut = f"{stack} cut in order"
    par.applied.append(f"pipeline(pp={s.pp}, {s.schedule.value}, virtual_stages={s.virtual_stages}, {cut}, blocks {layout})")


def finish(par: Parallelized) -> None:
    """The schedule over the wrapped chunks, and the tied weights' gradient all-reduce."""
    s = par.strategy
    if s.pp == 1:
        return
    ctx = par.ctx
    n_micro = s.num_microbatches(par.training.global_batch)
    group = ctx.mesh["pp"].get_group()
    par.schedule = apply_pipeline_schedule(par.chunks, s, n_micro, par.mdef.loss, group, ctx.device, par.pipe)
    if par.ties and par.pipe is not None:
        par.after_backward.append(traced_tie_sync(par.chunks, par.ties, par.mdef.module, group))
        par.applied.append(f"tied-weight gradients summed across stages ({', '.join(t.names[0] for t in par.ties)})")
    elif par.ties:
        groups = tie_groups(par.ties, ctx.dims, ctx.coords.dp, ctx.coords.tp, ctx.coords.cp, lambda st: stage_rank(s, st))
        par.after_backward.append(tied_gradient_sync(par.chunks, par.ties, groups))
        par.applied.append(f"tied-weight gradient all-reduce across stages ({', '.join(t.names[0] for t in par.ties)})")


class StageModule(nn.Module):
    """Consecutive top-level pieces of a model: pre-modules, a slice of its stack, post-modules."""

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
    """The stages rank pp_rank holds: looped (r, r + pp, ...), or V-shaped for ZB-V (r, 2 pp - 1 - r)."""
    if strategy.schedule.v_shaped:
        return [pp_rank, 2 * strategy.pp - 1 - pp_rank]
    return [pp_rank + k * strategy.pp for k in range(strategy.virtual_stages)]


def stage_rank(strategy: Strategy, stage: int) -> int:
    """The pipeline rank holding `stage` (the inverse of local_stages)."""
    if strategy.schedule.v_shaped:
        return stage if stage < strategy.pp else 2 * strategy.pp - 1 - stage
    return stage % strategy.pp


def apply_pipeline_split(model: nn.Module, strategy: Strategy, pp_rank: int, stack: str = "layers") -> list[Chunk]:
    """This pipeline rank's chunks of a chain-split `model` (which it may discard afterwards);
    `stack` is the top-level container of its blocks."""
    n_stages = strategy.pp * strategy.virtual_stages
    blocks = list(getattr(model, stack).named_children())
    ranges = layer_ranges(len(blocks), n_stages, strategy.stages)
    names = [name for name, _ in model.named_children()]
    cut = names.index(stack)
    chunks = []
    for s in local_stages(strategy, pp_rank):
        pieces = [(n, getattr(model, n)) for n in names[:cut]] if s == 0 else []
        pieces.append((stack, nn.ModuleDict({blocks[i][0]: blocks[i][1] for i in ranges[s]})))
        pieces += [(n, getattr(model, n)) for n in names[cut + 1 :]] if s == n_stages - 1 else []
        chunks.append(Chunk(s, StageModule(pieces)))
    return chunks


# ------------------------------------------------------------------ tied weights


@dataclass(frozen=True)
class CrossStageTie:
    names: tuple[str, ...]  # the parameter's names, as in the whole model
    stages: tuple[int, ...]  # the stage holding each name


def cross_stage_ties(model: nn.Module, strategy: Strategy, stack: str = "layers") -> list[CrossStageTie]:
    n_stages = strategy.pp * strategy.virtual_stages
    ranges = layer_ranges(len(getattr(model, stack)), n_stages, strategy.stages)
    names = [name for name, _ in model.named_children()]
    cut = names.index(stack)

    def stage_of(param: str) -> int:
        top, _, rest = param.partition(".")
        if top == stack:
            layer = int(rest.partition(".")[0])
            return next(s for s, r in enumerate(ranges) if layer in r)
        return 0 if names.index(top) < cut else n_stages - 1

    ties = [CrossStageTie(tuple(g), tuple(stage_of(n) for n in g)) for g in tied_parameters(model)]
    return [t for t in ties if len(set(t.stages)) > 1]


def tie_groups(ties: list[CrossStageTie], dims: ParallelDims, dp: int, tp: int, cp: int = 0,
               rank_of: Callable[[int], int] = None) -> list[Optional[dist.ProcessGroup]]:
    """One process group per tie joining its pipeline ranks at this rank's (dp, cp, tp) coordinates.

    Every rank creates every group (dist.new_group is collective) and keeps its own."""
    mine: list[Optional[dist.ProcessGroup]] = []
    for tie in ties:
        pp_ranks = sorted({rank_of(s) if rank_of else s % dims.pp for s in tie.stages})
        own = None
        for d in range(dims.dp):
            for c in range(dims.cp):
                for t in range(dims.tp):
                    group = dist.new_group([global_rank(dims, p, d, t, c) for p in pp_ranks])
                    own = group if (d, c, t) == (dp, cp, tp) else own
        mine.append(own)
    return mine


def tied_gradient_sync(chunks: list[Chunk], ties: list[CrossStageTie], groups: list) -> Callable[[], None]:
    """A function that sums the gradients of every copy of each tied weight: this rank's copies
    (ZB-V puts the first and the last stage on one rank), then over the tie's group."""
    held = []
    for tie, group in zip(ties, groups):
        copies = [p for chunk in chunks for name, p in chunk.module.named_parameters() if clean_name(name) in tie.names]
        held.append((copies, group))

    def sync() -> None:
        with torch.no_grad():
            for copies, group in held:
                grads = [_local(_like_param(p.grad, p)) for p in copies if p.grad is not None]
                if not grads:
                    continue
                total = grads[0].clone() if len(grads) > 1 else grads[0]
                for g in grads[1:]:
                    total += g
                if group is not None and dist.get_world_size(group) > 1:
                    dist.all_reduce(total, group=group)
                for p in copies:
                    if p.grad is not None:
                        p.grad = _like_param(p.grad, p)
                        _local(p.grad).copy_(total)

    return sync


def traced_pipeline(model: nn.Module, starts: list[str], example: tuple[torch.Tensor, ...]):
    """torch.distributed.pipelining's Pipe of `model`, cut before each block in `starts`;
    `example` is one micro-batch of inputs (the tracer records its shapes)."""
    try:
        pipe = pipeline(model, mb_args=example, split_spec={name: SplitPoint.BEGINNING for name in starts})
    except Exception as err:  # noqa: BLE001 - the tracer's complaint, in one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise InputError("strategy.pp", len(starts) + 1, f"torch.distributed.pipelining could not trace the model on this "
                         f"device and dtype ({type(err).__name__}: {first}); use a strategy without pp") from None
    for stage in pipe.split_gm.children():
        if isinstance(stage, fx.GraphModule):
            _contiguous_boundary(stage)
    return pipe


def _contiguous_boundary(stage: fx.GraphModule) -> None:
    """Make the tensors a stage sends and receives contiguous (gloo's send/recv refuse
    views such as an expanded attention mask); values unchanged. The receive buffers
    follow the placeholders' recorded example values."""
    graph = stage.graph
    for node in graph.nodes:
        val = node.meta.get("val")
        if node.op == "placeholder" and isinstance(val, torch.Tensor) and not val.is_contiguous():
            node.meta["val"] = val.contiguous()
    output = next(n for n in graph.nodes if n.op == "output")

    def contiguous(arg):
        if not (isinstance(arg, fx.Node) and isinstance(arg.meta.get("val"), torch.Tensor)):
            return arg
        with graph.inserting_before(output):
            made = graph.call_method("contiguous", (arg,))
        made.meta["val"] = arg.meta["val"].contiguous()
        return made

    output.args = fx.node.map_arg(output.args, contiguous)
    stage.recompile()


def traced_tie_sync(chunks: list[Chunk], ties: list[CrossStageTie], model: nn.Module, group) -> Callable[[], None]:
    """Sum tied weights' gradients over every copy on every stage of the pipeline group.

    The tracing front end gives each stage that uses a tied weight its own copy; each rank
    adds up its copies' whole gradients (none: zeros), all-reduces the sum over the pp group
    (every rank, every tie, in one order) and gives it to each copy, laid out as the copy."""
    params = [model.get_parameter(t.names[0]) for t in ties]
    copies = [list({id(p): p for c in chunks for n, p in c.module.named_parameters(remove_duplicate=False)
                    if clean_name(n) in t.names}.values()) for t in ties]

    def sync() -> None:
        with torch.no_grad():
            for param, mine in zip(params, copies):
                grads = [_whole(p.grad) for p in mine if p.grad is not None]
                total = torch.stack(grads).sum(0) if grads else torch.zeros(param.shape, dtype=param.dtype)
                dist.all_reduce(total, group=group)
                for p in mine:
                    p.grad = _laid_out_as(total, p)

    return sync


def _whole(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def _laid_out_as(full: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    if isinstance(p, DTensor):
        replicated = DTensor.from_local(full.clone(), p.device_mesh, [Replicate()] * p.device_mesh.ndim, run_check=False)
        return replicated.redistribute(p.device_mesh, p.placements)
    return full.clone()


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _like_param(grad: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The gradient laid out as its parameter: DTensor's vocab-parallel embedding backward
    returns a Replicate gradient for a Shard(0) weight; both copies must be cut alike."""
    if isinstance(grad, DTensor) and grad.placements != p.placements:
        return grad.redistribute(grad.device_mesh, p.placements)
    return grad


# ------------------------------------------------------------------ schedule


def apply_pipeline_schedule(chunks: list[Chunk], strategy: Strategy, n_microbatches: int, loss_fn, group, device: torch.device,
                            pipe=None):
    """Wrap each (already parallelized) chunk in a PipelineStage and build the plan's schedule;
    a traced `pipe` builds its own stages (they know which tensors cross which cut)."""
    n_stages = strategy.pp * strategy.virtual_stages
    if pipe is not None:
        stages = [pipe.build_stage(c.stage, device, group) for c in chunks]
    else:
        stages = [PipelineStage(c.module, c.stage, n_stages, device, group=group) for c in chunks]
    if strategy.schedule is Schedule.GPIPE:
        return ScheduleGPipe(stages[0], n_microbatches, loss_fn=loss_fn)
    if strategy.schedule is Schedule.ONE_F_ONE_B:
        return Schedule1F1B(stages[0], n_microbatches, loss_fn=loss_fn)
    if strategy.schedule is Schedule.ZERO_BUBBLE:
        return ScheduleInterleavedZeroBubble(stages, n_microbatches, loss_fn=loss_fn)
    if strategy.schedule is Schedule.ZBV:
        return ScheduleZBVZeroBubble(stages, n_microbatches, loss_fn=loss_fn)
    if strategy.schedule is Schedule.DUALPIPEV:
        return ScheduleDualPipeV(stages, n_microbatches, loss_fn=loss_fn)
    return ScheduleInterleaved1F1B(stages, n_microbatches, loss_fn=loss_fn)
