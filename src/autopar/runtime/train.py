"""The training loop: build the model, apply the strategy, run the steps, measure them.

A built-in family is built on the meta device and parallelized before any weight exists
(each rank then draws only its shards: materialize.py); a user module or transformers
model is built whole on every rank by its own initialisation, then parallelized.

`train(recipe, strategy, options, device)` runs inside an initialised process group
(one process per dp * tp * pp rank) and returns the run's measurements, identical on
every rank. A technique may replace the loop (Hogwild: its apply module's `run`) or the
trainer (IST: `make_trainer`). A trainer's `step(i)` returns this rank's weighted share
of step i's loss (the global mean loss is the sum over ranks), so the losses need one
collective at the end and none per step. Progress goes to `options.on_step`; nothing
here prints.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional, Protocol

import torch
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel

from autopar.cost.model import CostModel
from autopar.models import build_model, is_builtin
from autopar.profile.profiler import profile_recipe
from autopar.runtime.checkpoint import Checkpointer, CheckpointOptions
from autopar.runtime.data import Batch, BatchSource
from autopar.runtime.mesh import ParallelDims, RankContext
from autopar.runtime.names import clean_name
from autopar.runtime.parallelize import applied_modules, parallelize
from autopar.runtime.parallelized import GradSync
from autopar.runtime.precision import PrecisionPlan
from autopar.runtime.report import RunResult, StepLog, peak_memory_bytes
from autopar.spec.cluster import Cluster, local_cluster
from autopar.spec.enums import DataPartition
from autopar.spec.recipe import Recipe
from autopar.spec.strategy import Strategy
from autopar.techniques.microbatch.apply import micro, micro_target, sync_unless


@dataclass(frozen=True)
class RunOptions:
    steps: int
    dtype: Optional[torch.dtype] = None  # build and train in this dtype, no mixed precision (tests: float64)
    checkpoint: Optional[CheckpointOptions] = None  # resume from its latest step, save every N steps
    on_step: Optional[Callable[[int, int, float], None]] = None  # (step done, steps, seconds): progress, on every rank
    cluster: Optional[Cluster] = None  # what the prediction (and a pipeline's default layout) is for


class Trainer(Protocol):
    applied: list[str]

    def step(self, step: int) -> torch.Tensor: ...

    def full_parameters(self) -> dict[str, torch.Tensor]: ...


def train(recipe: Recipe, s: Strategy, options: RunOptions, device: torch.device) -> RunResult:
    """A pipeline without `stages=` runs the layout the cost model prices for `options.cluster`
    (the one its prediction uses: with_stages)."""
    s = with_stages(recipe, s, options.cluster)
    for module in applied_modules(s):  # a technique that replaces the whole loop (Hogwild)
        if hasattr(module, "run") and (result := module.run(recipe, s, options, device)) is not None:
            return result
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
        if options.on_step:
            options.on_step(i + 1, options.steps, log.times[-1])
        if saver:
            saver.guard_finite(loss, i + 1)
            saver.after_step(i + 1, options.steps)
    return log.result(trainer, s, recipe, first)


def with_stages(recipe: Recipe, s: Strategy, cluster: Optional[Cluster]) -> Strategy:
    """`s` with its stage layout: given, or the one the cost model prices (and predicts) for it.
    Every rank computes the same, deterministically; no layout is decided here."""
    if s.pp == 1 or s.stages is not None:
        return s
    return CostModel.for_recipe(recipe, cluster or local_cluster(recipe, s)).with_stages(s)


def make_trainer(recipe: Recipe, s: Strategy, ctx: RankContext, precision: PrecisionPlan, steps: int) -> Trainer:
    """The trainer a technique asks for (IST: its own), else the standard one."""
    for module in applied_modules(s):
        if hasattr(module, "make_trainer"):
            return module.make_trainer(recipe, s, ctx, precision, steps)
    return StandardTrainer(recipe, s, ctx, precision, steps)


def build_for(recipe: Recipe, s: Strategy, device: torch.device, dtype: torch.dtype):
    """A built-in family on the meta device (parallelize() then draws only this rank's
    shards, see materialize.py); any other model whole on `device`, by its own init. A model
    without a declared tp_plan gets the Linear pairs the profiler found (its facts)."""
    seed = recipe.training.seed
    if is_builtin(recipe.model):
        torch.manual_seed(seed)  # as a build on the device seeds it: dropout draws from it
        mdef = build_model(recipe.model, "meta", dtype, seed)
    else:
        mdef = build_model(recipe.model, device, dtype, seed)
    if s.tp > 1 and mdef.tp_plan is None:
        mdef = replace(mdef, tp_plan=dict(profile_recipe(recipe).facts.tp_plan))
    return mdef


class StandardTrainer:
    """Synchronous strategies (DDP, ZeRO, TP, PP, features) and local SGD."""

    def __init__(self, recipe: Recipe, s: Strategy, ctx: RankContext, precision: PrecisionPlan, steps: int):
        mdef = build_for(recipe, s, ctx.device, precision.param_dtype)
        self.s, self.ctx, self.precision, self.loss_fn = s, ctx, precision, mdef.loss
        self.source = BatchSource(mdef, recipe, ctx.device, precision.param_dtype)
        self.par = parallelize(mdef, profile_recipe(recipe).facts, s, ctx, recipe.training, precision, steps)
        self.applied = self.par.applied
        self.scaler = precision.grad_scaler()
        self.n_micro = s.num_microbatches(recipe.training.global_batch)
        n_stages = s.pp * s.virtual_stages
        self.first = any(c.stage == 0 for c in self.par.chunks)
        self.last = any(c.stage == n_stages - 1 for c in self.par.chunks)
        self.weight = 1.0 / (s.dp * s.cp) if (self.last and ctx.coords.tp == 0) else 0.0  # cp ranks: equal pieces of each sample

    def step(self, step: int) -> torch.Tensor:
        inputs, target = self._batch(step)
        with loss_parallel() if self.par.loss_parallel else contextlib.nullcontext():
            loss = self._pipeline(inputs, target) if self.par.schedule is not None else self._accumulate(inputs, target)
        for hook in self.par.after_backward:
            hook()
        self._update()
        for hook in self.par.after_step:
            hook(step)
        return loss * self.weight

    def _batch(self, step: int) -> Batch:
        if self.s.data_partition is DataPartition.FEATURES:
            inputs, target = self.source.rows(step, 0, self.source.global_batch)
            return (self.par.feature_slice.take(inputs) if self.par.feature_slice else inputs), target
        inputs, target = self.source.replica_rows(step, self.ctx.coords.dp, self.s.dp)
        pos = self.par.seq_positions
        if pos is None:
            return inputs, target
        return (inputs[0][:, pos], *inputs[1:]), target[:, pos]  # context parallel: this rank's positions of the tokens

    def _accumulate(self, inputs, target) -> torch.Tensor:
        """Forward and backward each micro-batch; gradients sync on the last one only."""
        model = self.par.chunks[0].module
        total = torch.zeros((), device=self.ctx.device, dtype=torch.float64)
        for i in range(self.n_micro):
            mb_inputs, mb_target = micro(inputs, i, self.n_micro), micro_target(target, i, self.n_micro)
            with sync_unless(i == self.n_micro - 1, self.n_micro, self.par.grad_sync, model, every=self.s.zero == 3):
                with self.precision.autocast(self.par.grad_sync is GradSync.FSDP):
                    loss = self.loss_fn(model(*mb_inputs), mb_target)
                scaled = loss / self.n_micro if self.n_micro > 1 else loss
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            total += _plain(loss.detach())
        return total / self.n_micro

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
            for name, p in chunk.module.named_parameters(remove_duplicate=False):  # tied aliases too
                name = clean_name(name)
                gather = self.par.gatherers.get(name)
                out[name] = gather(p) if gather else full_tensor(p)
        for tie in self.par.ties:  # a traced stage holds a tied weight under the names it uses
            held = next((out[n] for n in tie.names if n in out), None)
            out.update({n: held for n in tie.names if held is not None and n not in out})
        return out


def full_tensor(p: torch.Tensor) -> torch.Tensor:
    return p.full_tensor().detach() if isinstance(p, DTensor) else p.detach()


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t
