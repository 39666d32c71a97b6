"""Independent subnetwork training (IST; Yuan et al., "Distributed learning of fully
connected neural networks using independent subnet training", VLDB 2022).

The hidden units of every MLP/FFN hidden layer (a "hidden group": the Linears that
produce the units, and the Linears that consume them) are randomly split into dp
disjoint parts, the same draw on every rank. Worker r builds the subnetwork that keeps
only part r of every group (sliced copies of those Linears) and trains it alone for
`sync_every` steps on its share of each global batch, with a fresh optimizer. Then the
subnetworks are reassembled: every worker's trained block is written back into the
full network (the blocks are disjoint, so one all-reduce of the changes does it), the
parameters outside every group (attention, norms, embeddings, output bias) are
averaged, and a new partition is drawn.

Scaling: a subnetwork sees 1/dp of each hidden layer, so the input of every consumer
Linear is multiplied by dp (the inverted-dropout convention); the reassembled network
then matches the subnetworks in expectation. Weights joining two different parts of
consecutive hidden layers (MLPs with >= 2 hidden layers) belong to no subnetwork and
keep their values. Every rank keeps the full network; dp must not exceed the
narrowest hidden layer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from autopar.models import build_model
from autopar.profile.facts import HiddenGroup, hidden_groups
from autopar.runtime.data import SEED_STRIDE, BatchSource
from autopar.runtime.mesh import RankContext, dp_group
from autopar.runtime.names import clean_name
from autopar.runtime.optim import build_optimizer
from autopar.runtime.precision import PrecisionPlan
from autopar.spec.enums import Recompute
from autopar.spec.recipe import Recipe
from autopar.spec.strategy import Strategy
from autopar.techniques.recompute.apply import apply_activation_checkpointing


def make_trainer(recipe: Recipe, s: Strategy, ctx: RankContext, precision: PrecisionPlan, steps: int) -> "SubnetTrainer":
    """IST replaces the standard trainer: every rank keeps the full network and trains its subnetwork."""
    return SubnetTrainer(recipe, s, ctx, precision, steps)


@dataclass(frozen=True)
class Partition:
    """This worker's units: output rows and input columns kept of each sliced Linear."""

    rows: dict[str, torch.Tensor]
    cols: dict[str, torch.Tensor]

    def index(self, module: str, param: torch.Tensor, is_weight: bool) -> Optional[tuple[torch.Tensor, ...]]:
        """Index of this worker's block of `param`; None if the parameter is not partitioned."""
        rows, cols = self.rows.get(module), self.cols.get(module) if is_weight else None
        if rows is None and cols is None:
            return None
        r = rows if rows is not None else torch.arange(param.shape[0], device=param.device)
        if not is_weight:
            return (r,)
        c = cols if cols is not None else torch.arange(param.shape[1], device=param.device)
        return (r[:, None], c[None, :])


def draw_partition(groups: list[HiddenGroup], rank: int, ranks: int, seed: int, device: torch.device) -> Partition:
    gen = torch.Generator().manual_seed(seed)
    rows: dict[str, torch.Tensor] = {}
    cols: dict[str, torch.Tensor] = {}
    for g in groups:
        units = torch.randperm(g.width, generator=gen).tensor_split(ranks)[rank].sort().values.to(device)
        rows.update({name: units for name in g.producers})
        cols.update({name: units for name in g.consumers})
    return Partition(rows, cols)


def apply_subnet(full: nn.Module, part: Partition, scale: float) -> nn.Module:
    """A copy of `full` keeping only this worker's units (consumer inputs scaled by `scale`)."""
    sub = copy.deepcopy(full)
    for name in set(part.rows) | set(part.cols):
        new = _sliced_linear(sub.get_submodule(name), part, name)
        if name in part.cols:
            new.register_forward_pre_hook(lambda _m, args: (args[0] * scale, *args[1:]))
        parent, _, attr = name.rpartition(".")
        sub.get_submodule(parent).register_module(attr, new)
    return sub


def _sliced_linear(old: nn.Linear, part: Partition, name: str) -> nn.Linear:
    weight = old.weight.detach()[part.index(name, old.weight, True)]  # (rows kept, cols kept)
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=old.bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if old.bias is not None:
            idx = part.index(name, old.bias, False)
            new.bias.copy_(old.bias[idx] if idx is not None else old.bias)
    return new


def reassemble(full: nn.Module, sub: nn.Module, part: Partition, group, ranks: int) -> None:
    """Write every worker's trained block back into `full`; average the shared parameters."""
    trained = {clean_name(name): p for name, p in sub.named_parameters()}
    with torch.no_grad():
        for name, p in full.named_parameters():
            module, _, attr = name.rpartition(".")
            idx = part.index(module, p, attr == "weight")
            if idx is None:
                mean = trained[name].detach().clone()
                dist.all_reduce(mean, group=group)
                p.copy_(mean / ranks)
                continue
            delta = torch.zeros_like(p)
            delta[idx] = trained[name].detach() - p[idx]
            dist.all_reduce(delta, group=group)
            p.add_(delta)


class SubnetTrainer:
    def __init__(self, recipe: Recipe, s: Strategy, ctx: RankContext, precision: PrecisionPlan, steps: int):
        mdef = build_model(recipe.model, ctx.device, precision.param_dtype, recipe.training.seed)
        self.full, self.loss_fn, self.groups = mdef.module, mdef.loss, hidden_groups(mdef.module)
        self.recipe, self.s, self.ctx, self.precision, self.steps = recipe, s, ctx, precision, steps
        self.source = BatchSource(mdef, recipe, ctx.device, precision.param_dtype)
        self.group = dp_group(ctx.mesh, ctx.dims)
        self.applied = [f"subnet(dp={s.dp}, {len(self.groups)} hidden groups, reassembled every {s.sync_every} steps)"]
        if s.recompute is not Recompute.NONE:
            self.applied.append(f"recompute({s.recompute.value})")

    def step(self, step: int) -> torch.Tensor:
        rank, ranks, period = self.ctx.coords.dp, self.s.dp, self.s.sync_every
        if step % period == 0:
            seed = self.recipe.training.seed * SEED_STRIDE + step // period
            self.part = draw_partition(self.groups, rank, ranks, seed, self.ctx.device)
            self.sub = apply_subnet(self.full, self.part, float(ranks))
            apply_activation_checkpointing(self.sub, self.s.recompute)
            self.optimizer = build_optimizer(self.sub.parameters(), self.recipe.training)
        inputs, target = self.source.replica_rows(step, rank, ranks)
        with self.precision.autocast(False):
            loss = self.loss_fn(self.sub(*inputs), target)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if (step + 1) % period == 0 or step == self.steps - 1:
            reassemble(self.full, self.sub, self.part, self.group, ranks)
        return loss.detach().to(torch.float64) / ranks

    def full_parameters(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.full.named_parameters()}
