"""Asynchronous data parallelism as local SGD (Stich 2019; Lin et al. 2020, "Don't use large
mini-batches, use local SGD").

Each dp rank trains its own replica on its share of every global batch, with its own
optimizer and no gradient communication; every `sync_every` steps (and after the last
step, so the run ends with one model) the replicas' parameters are averaged with one
all-reduce (torch.distributed.algorithms.model_averaging.utils.average_parameters).
Optimizer states stay local. sync_every=1 with SGD equals synchronous training.
"""

from __future__ import annotations

from typing import Callable

from torch import nn
from torch.distributed.algorithms.model_averaging.utils import average_parameters

from autopar.runtime.mesh import dp_group
from autopar.runtime.parallelized import Parallelized


def apply(par: Parallelized) -> None:
    s = par.strategy
    if not s.is_async or s.threads > 1:  # Hogwild runs its own loop (techniques/threads/apply.py)
        return
    group = dp_group(par.ctx.mesh, par.ctx.dims)
    par.after_step.append(apply_local_sgd(par.chunks[0].module, s.sync_every, par.steps, group))
    par.applied.append(f"local_sgd(dp={s.dp}, average every {s.sync_every} steps)")


def apply_local_sgd(module: nn.Module, period: int, steps: int, group) -> Callable[[int], None]:
    """A post-optimizer-step hook: average the replicas when `step` (0-based) ends a period."""

    def after_step(step: int) -> None:
        if (step + 1) % period == 0 or step == steps - 1:
            average_parameters(module.parameters(), group)

    return after_step
