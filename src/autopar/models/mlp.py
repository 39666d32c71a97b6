"""Multi-layer perceptron classifier: Linear+ReLU blocks, then a Linear to the classes."""

from __future__ import annotations

import torch
from torch import nn

from autopar.models.init import InitScheme
from autopar.spec.recipe import MLPSpec


class Dense(nn.Module):
    def __init__(self, d_in: int, d_out: int, activation: bool = True):
        super().__init__()
        self.fc = nn.Linear(d_in, d_out)
        self.act = nn.ReLU() if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


class MLP(nn.Module):
    init_scheme = InitScheme.TORCH_DEFAULT  # drawn by autopar.models.init
    block_stacks = ("layers",)  # the stack a pipeline cuts and recomputation checkpoints (profile/structure.py)

    def __init__(self, spec: MLPSpec):
        super().__init__()
        dims = [spec.input_dim, *spec.widths, spec.classes]
        last = len(dims) - 2
        self.layers = nn.ModuleList(Dense(dims[i], dims[i + 1], activation=i < last) for i in range(len(dims) - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, input_dim) -> (B, classes)
        for layer in self.layers:
            x = layer(x)
        return x

    def tp_plan(self) -> dict[str, str]:
        """Megatron MLP pairs along the stack: column-split one Linear, row-split the next.

        With an odd number of Linears the classifier stays replicated."""
        n = len(self.layers)
        plan = {}
        for i in range(0, n - 1, 2):
            plan[f"layers.{i}.fc"] = "colwise"
            plan[f"layers.{i + 1}.fc"] = "rowwise"
        return plan
