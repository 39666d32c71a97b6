"""The training loop: build the model, apply the strategy, run the steps, measure them.

A built-in family is built on the meta device and parallelized before any weight exists
(each rank then draws only its shards: materialize.py); a user module or transformers
model is built whole on every rank by its own initialisation, then parallelized.

`train(recipe, strategy, options, device)` runs inside an initialised process group
(one process per dp * tp * pp rank) and returns the run's measurements, identical on
every rank. A trainer's `step(i)` returns this rank's weighted share of step i's loss
(the global mean loss is the sum over ranks), so the losses need one collective at
the end and none per step.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from typing import Optional, Protocol

import torch
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel

from autopar.models import build_model, is_builtin
from autopar.runtime.checkpoint import Checkpointer, CheckpointOptions
from autopar.runtime.checkpointing import clean_name
from autopar.runtime.data import Batch, BatchSource
from autopar.runtime.local_sgd import apply_local_sgd
from autopar.runtime.mesh import ParallelDims, RankContext, dp_group
from autopar.runtime.parallelize import GradSync, parallelize
from autopar.runtime.precision import PrecisionPlan
from autopar.runtime.report import RunResult, StepLog, peak_memory_bytes
from autopar.spec.enums import DataPartition
from autopar.spec.recipe import Recipe
from autopar.spec.strategy import Strategy


@dataclass(frozen=True)
class RunOptions:
    steps: int
    dtype: Optional[torch.dtype] = None  # build and train in this dtype, no mixed precision (tests: float64)
    progress: bool = False  # rank 0 prints one line per step to stderr
    checkpoint: Optional[CheckpointOptions] = None  # resume from its latest step, save every N steps


class Trainer(Protocol):
    applied: list[str]

    def step(self, step: int) -> torch.Tensor: ...

    def full_parameters(self) -> dict[str, torch.Tensor]: ...


def train(recipe: Recipe, s: Strategy, options: RunOptions, device: torch.device) -> RunResult:
    from autopar.runtime import shared_memory

    if shared_memory.is_hogwild(s):
        return shared_memory.run_hogwild(recipe, s, options)
    shared_memory.apply_threads(s.threads)
    ctx = RankContext.create(ParallelDims.from_strategy(s), device)
    precision = PrecisionPlan.of(recipe.training.precision, device.type, options.dtype)
    trainer = make_trainer(recipe, s, ctx, precision, options.steps)
    saver = Checkpointer(options.checkpoint, trainer, recipe, s) if options.checkpoint else None
    first = saver.resume() if saver else 0  # steps already trained: the data stream continues at `first`
    if saver:
        trainer.applied.append(saver.describe(first))
    log = StepLog()
    for i in range(first, options.steps):
        start = time.perf_counter()
        loss = trainer.step(i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        log.add(loss, time.perf_counter() - start, peak_memory_bytes(device))
        if options.progress and torch.distributed.get_rank() == 0:
            print(f"step {i + 1}/{options.steps}: {log.times[-1]:.3f} s", file=sys.stderr, flush=True)
        if saver:
            saver.after_step(i + 1, options.steps)
    return log.result(trainer, s, recipe, first)


def make_trainer(recipe: Recipe, s: Strategy, ctx: RankContext, precision: PrecisionPlan, steps: int) -> Trainer:
    if s.subnet:
        from autopar.runtime.subnet import SubnetTrainer

        return SubnetTrainer(recipe, s, ctx, precision, steps)
    return StandardTrainer(recipe, s, ctx, precision, steps)


def with_tp_plan(mdef, recipe: Recipe, s: Strategy):
    """A model without a declared tp_plan gets the Linear pairs the profiler detects
    (found on a meta copy: same module names, no weights)."""
    if s.tp == 1 or mdef.tp_plan is not None:
        return mdef
    from dataclasses import replace

    from autopar.profile.profiler import tp_plan_of

    return replace(mdef, tp_plan=tp_plan_of(build_model(recipe.model, "meta")))


def build_on_meta_if_builtin(recipe: Recipe, device: torch.device, dtype: torch.dtype):
    """A built-in family on the meta device (parallelize() then draws only this rank's
    shards, see materialize.py); any other model whole on `device`, by its own init."""
    seed = recipe.training.seed
    if not is_builtin(recipe.model):
        return build_model(recipe.model, device, dtype, seed)
    torch.manual_seed(seed)  # as a build on the device seeds it: dropout draws from it
    return build_model(recipe.model, "meta", dtype, seed)


class StandardTrainer:
    """Synchronous strategies (DDP, ZeRO, TP, PP, features) and local SGD."""

    def __init__(self, recipe: Recipe, s: Strategy, ctx: RankContext, precision: PrecisionPlan, steps: int):
        mdef = with_tp_plan(build_on_meta_if_builtin(recipe, ctx.device, precision.param_dtype), recipe, s)
        self.s, self.ctx, self.precision, self.loss_fn = s, ctx, precision, mdef.loss
        self.source = BatchSource(mdef, recipe, ctx.device, precision.param_dtype)
        self.par = parallelize(mdef, s, ctx, recipe.training, precision)
        self.applied = self.par.applied
        self.scaler = precision.grad_scaler()
        self.n_micro = num_microbatches(s, recipe.training.global_batch)
        self.after_step = []
        if s.is_async:
            self.after_step.append(apply_local_sgd(self.par.chunks[0].module, s.sync_every, steps, dp_group(ctx.mesh, ctx.dims)))
            self.applied.append(f"local_sgd(dp={s.dp}, average every {s.sync_every} steps)")
        n_stages = s.pp * s.virtual_stages
        self.first = any(c.stage == 0 for c in self.par.chunks)
        self.last = any(c.stage == n_stages - 1 for c in self.par.chunks)
        self.weight = 1.0 / s.dp if (self.last and ctx.coords.tp == 0) else 0.0

    def step(self, step: int) -> torch.Tensor:
        inputs, target = self._batch(step)
        with loss_parallel() if self.par.loss_parallel else contextlib.nullcontext():
            loss = self._pipeline(inputs, target) if self.par.schedule is not None else self._accumulate(inputs, target)
        for hook in self.par.after_backward:
            hook()
        self._update()
        for hook in self.after_step:
            hook(step)
        return loss * self.weight

    def _batch(self, step: int) -> Batch:
        if self.s.data_partition is DataPartition.FEATURES:
            inputs, target = self.source.rows(step, 0, self.source.global_batch)
            return (self.par.feature_slice.take(inputs) if self.par.feature_slice else inputs), target
        return self.source.replica_rows(step, self.ctx.coords.dp, self.s.dp)

    def _accumulate(self, inputs, target) -> torch.Tensor:
        """Forward and backward each micro-batch; gradients sync on the last one only."""
        model = self.par.chunks[0].module
        total = torch.zeros((), device=self.ctx.device, dtype=torch.float64)
        for i in range(self.n_micro):
            mb_inputs, mb_target = _micro(inputs, i, self.n_micro), _micro_target(target, i, self.n_micro)
            with self._sync_unless(i == self.n_micro - 1, model):
                with self.precision.autocast(self.par.grad_sync is GradSync.FSDP):
                    loss = self.loss_fn(model(*mb_inputs), mb_target)
                scaled = loss / self.n_micro if self.n_micro > 1 else loss
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            total += _plain(loss.detach())
        return total / self.n_micro

    def _sync_unless(self, last: bool, model) -> contextlib.AbstractContextManager:
        if self.n_micro == 1:
            return contextlib.nullcontext()
        if self.par.grad_sync is GradSync.DDP and not last:
            return model.no_sync()
        if self.par.grad_sync is GradSync.FSDP:
            model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def _pipeline(self, inputs, target) -> torch.Tensor:
        losses: list[torch.Tensor] = []
        args = inputs if self.first else ()
        kwargs = {"target": target, "losses": losses} if self.last else {}
        with self.precision.autocast(self.par.grad_sync is GradSync.FSDP):
            self.par.schedule.step(*args, return_outputs=False, **kwargs)
        if not losses:
            return torch.zeros((), device=self.ctx.device, dtype=torch.float64)
        return torch.stack([_plain(x.detach()) for x in losses]).to(torch.float64).mean()

    def _update(self) -> None:
        if self.scaler:
            self.scaler.step(self.par.optimizer)
            self.scaler.update()
        else:
            self.par.optimizer.step()
        self.par.optimizer.zero_grad(set_to_none=True)

    def full_parameters(self) -> dict[str, torch.Tensor]:
        """Every parameter this rank holds, whole (collective over the rank's dp/tp peers)."""
        out = {}
        for chunk in self.par.chunks:
            for name, p in chunk.module.named_parameters():
                name = clean_name(name)
                gather = self.par.gatherers.get(name)
                out[name] = gather(p) if gather else full_tensor(p)
        return out


def num_microbatches(s: Strategy, global_batch: int) -> int:
    """Micro-batches per step on one rank; with data_partition=features every rank sees the whole batch."""
    if s.data_partition is DataPartition.FEATURES:
        return global_batch // (s.microbatch or global_batch)
    return s.num_microbatches(global_batch)


def full_tensor(p: torch.Tensor) -> torch.Tensor:
    return p.full_tensor().detach() if isinstance(p, DTensor) else p.detach()


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def _micro(inputs: tuple[torch.Tensor, ...], i: int, n: int) -> tuple[torch.Tensor, ...]:
    return tuple(x.chunk(n)[i] for x in inputs) if n > 1 else inputs


def _micro_target(target: Optional[torch.Tensor], i: int, n: int) -> Optional[torch.Tensor]:
    return target if target is None or n == 1 else target.chunk(n)[i]
