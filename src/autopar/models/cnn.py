"""ResNet-style CNN (He et al. 2016) with GroupNorm.

GroupNorm instead of BatchNorm keeps each sample's math independent of the batch,
so data-parallel training equals single-process training exactly (BatchNorm would
need SyncBatchNorm). `depth` residual blocks are spread over up to 4 stages; each
later stage halves the resolution and doubles the width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from autopar.models.init import InitScheme
from autopar.spec.recipe import CNNSpec


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class Stem(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm = _norm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = _norm(c_out)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), _norm(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(y)) + self.shortcut(x))


class ClassifierHead(nn.Module):
    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        return self.fc(x.mean(dim=(2, 3)))


def stage_of_blocks(depth: int) -> list[int]:
    """Stage index of each block: depth blocks over min(4, depth) stages, earlier stages first."""
    stages = min(4, depth)
    return [i * stages // depth for i in range(depth)]


class CNN(nn.Module):
    init_scheme = InitScheme.TORCH_DEFAULT  # drawn by autopar.models.init
    block_stacks = ("layers",)  # the stack a pipeline cuts and recomputation checkpoints (profile/structure.py)

    def __init__(self, spec: CNNSpec):
        super().__init__()
        self.stem = Stem(spec.channels, spec.width)
        blocks, c_in, current = [], spec.width, 0
        for stage in stage_of_blocks(spec.depth):
            c_out = spec.width * 2**stage
            stride = 2 if stage != current and spec.image_size >= 2 ** (stage + 1) else 1
            blocks.append(BasicBlock(c_in, c_out, stride))
            c_in, current = c_out, stage
        self.layers = nn.ModuleList(blocks)
        self.head = ClassifierHead(c_in, spec.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)
