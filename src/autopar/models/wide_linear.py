"""The high-dimensional case: a linear model whose input layer dominates.

input_dim may reach 1e9, so the first weight (hidden x input_dim) alone can exceed a
device; partitioning the data by feature columns splits it across workers, each
computing a partial product that one all-reduce sums (the seed's 'partitioning by
dimensions').
"""

from __future__ import annotations

import torch
from torch import nn

from autopar.models.init import InitScheme
from autopar.spec.recipe import WideLinearSpec


class WideInput(nn.Module):
    def __init__(self, input_dim: int, width: int, activation: bool):
        super().__init__()
        self.fc = nn.Linear(input_dim, width)
        self.act = nn.ReLU() if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, input_dim) -> (B, width)
        return self.act(self.fc(x))


class WideLinear(nn.Module):
    init_scheme = InitScheme.TORCH_DEFAULT  # drawn by autopar.models.init
    block_stacks = ("layers",)  # the stack a pipeline cuts and recomputation checkpoints (profile/structure.py)

    def __init__(self, spec: WideLinearSpec):
        super().__init__()
        width = spec.hidden or spec.classes
        layers: list[nn.Module] = [WideInput(spec.input_dim, width, activation=spec.hidden is not None)]
        if spec.hidden is not None:
            layers.append(nn.Linear(spec.hidden, spec.classes))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    @staticmethod
    def feature_layer() -> str:
        """The Linear whose input columns are split when data is partitioned by features."""
        return "layers.0.fc"
