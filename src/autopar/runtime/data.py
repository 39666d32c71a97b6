"""Batches: which samples a rank trains on at each step, synthetic or from the user's loader.

Step `s` of a run trains on the global batch of samples
    ids(s) = (s * global_batch + arange(global_batch)) mod data.samples,
and data-parallel rank r of dp takes rows [r * B/dp, (r+1) * B/dp) of it, so any
strategy sees exactly the samples single-process training sees.

Synthetic data (the default) is `synthetic_batch` of the whole global batch with
seed `training.seed * 2**20 + s`: deterministic, and independent of the strategy.

A user dataset: `data: {loader: "package.module:function"}` names

    def load(indices: torch.Tensor) -> tuple[inputs, target]

called by each rank with a 1-D int64 tensor of the sample ids it needs (its rows of
ids(s), in order). `inputs` is a Tensor or a tuple of Tensors (the model's positional
arguments), `target` a Tensor or None; the batch dimension comes first. Floating
tensors are cast to the run's dtype; everything is moved to the rank's device.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from autopar.errors import InputError
from autopar.models import ModelDef, import_object, synthetic_batch
from autopar.spec.recipe import Recipe

Batch = tuple[tuple[torch.Tensor, ...], Optional[torch.Tensor]]
SEED_STRIDE = 2**20  # steps per seed: seeds of different runs never collide below a million steps


def load_loader(recipe: Recipe) -> Optional[Callable[[torch.Tensor], Any]]:
    """The user's loader function, or None for synthetic data (InputError if it cannot be imported)."""
    if recipe.data.loader is None:
        return None
    fn = import_object(recipe.data.loader, "data.loader")
    if not callable(fn):
        raise InputError("data.loader", recipe.data.loader, "must name a function load(indices) -> (inputs, target)")
    return fn


class BatchSource:
    """Rows of each step's global batch, on a device, in a float dtype."""

    def __init__(self, mdef: ModelDef, recipe: Recipe, device: torch.device, float_dtype: torch.dtype):
        self.mdef = mdef
        self.global_batch = recipe.training.global_batch
        self.samples = recipe.data.samples
        self.seed = recipe.training.seed
        self.device = device
        self.float_dtype = float_dtype
        self.loader = load_loader(recipe)

    def rows(self, step: int, start: int, stop: int) -> Batch:
        """Rows [start, stop) of step `step`'s global batch."""
        if self.loader is None:
            inputs, target = synthetic_batch(self.mdef, self.global_batch, self.seed * SEED_STRIDE + step, "cpu", self.float_dtype)
            return self._place(tuple(x[start:stop] for x in inputs), None if target is None else target[start:stop])
        ids = (step * self.global_batch + torch.arange(start, stop, dtype=torch.int64)) % self.samples
        return self._place(*_normalise(self.loader(ids), self.mdef.name))

    def replica_rows(self, step: int, replica: int, replicas: int) -> Batch:
        """The share of data-parallel replica `replica` of `replicas`."""
        per = self.global_batch // replicas
        return self.rows(step, replica * per, (replica + 1) * per)

    def _place(self, inputs: tuple[torch.Tensor, ...], target: Optional[torch.Tensor]) -> Batch:
        return tuple(self._move(x) for x in inputs), None if target is None else self._move(target)

    def _move(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.float_dtype if x.is_floating_point() else x.dtype
        return x.to(device=self.device, dtype=dtype, non_blocking=True)


def _normalise(loaded: Any, model: str) -> Batch:
    if not (isinstance(loaded, (tuple, list)) and len(loaded) == 2):
        raise InputError("data.loader", type(loaded).__name__, f"must return (inputs, target) for model {model}")
    inputs, target = loaded
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if not all(isinstance(x, torch.Tensor) for x in inputs) or not (target is None or isinstance(target, torch.Tensor)):
        raise InputError("data.loader", "non-tensor", "inputs must be Tensors (or a tuple of them) and target a Tensor or None")
    return inputs, target
