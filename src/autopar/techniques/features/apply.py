"""Data parallelism by features: each dp rank holds a slice of every sample's input features.

For a model whose first op is the Linear `feature_layer` (mlp, wide_linear), rank r of
dp keeps input columns [lo_r, hi_r) and the matching columns of that Linear's weight
(out x in/dp). Each rank computes its partial product x[:, lo:hi] @ W[:, lo:hi]^T; one
all-reduce sums them (forward), and since everything after it is replicated, the
gradient flowing back to each partial product is the same on every rank: the
backward of the sum is the identity (Megatron-LM's "reduce from model parallel
region"). The bias and all later layers are replicated and receive identical
gradients on every rank without communication. Columns are split as evenly as
possible (the first in_features % dp ranks take one more).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from autopar.runtime.mesh import dp_group
from autopar.runtime.parallelized import LocalSlice, Parallelized
from autopar.spec.enums import DataPartition


def apply(par: Parallelized) -> None:
    s, mdef = par.strategy, par.mdef
    if s.data_partition is not DataPartition.FEATURES or s.dp == 1:
        return
    group = dp_group(par.ctx.mesh, par.ctx.dims)
    part = apply_feature_partition(mdef.module, mdef.feature_layer, par.ctx.coords.dp, s.dp, group)
    name = f"{mdef.feature_layer}.weight"
    par.feature_slice = part
    par.param_offsets[name] = (0, part.lo)  # its columns start at lo of the full (out, in) weight
    par.gatherers[name] = lambda t: gather_columns(t, part, group)
    par.local_slices[name] = LocalSlice(1, part.lo, part.hi, sum(part.widths))
    par.applied.append(f"features(dp={s.dp}, columns {part.lo}:{part.hi} of {mdef.feature_layer})")


class _SumPartials(torch.autograd.Function):
    """Forward: all-reduce (sum) the partial products; backward: identity."""

    @staticmethod
    def forward(ctx, partial: torch.Tensor, group) -> torch.Tensor:
        total = partial.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class FeatureShardLinear(nn.Module):
    """y = sum_r x_r @ W_r^T + b, this rank holding W_r = W[:, lo:hi]."""

    def __init__(self, full: nn.Linear, lo: int, hi: int, group):
        super().__init__()
        self.weight = nn.Parameter(full.weight.detach()[:, lo:hi].clone())
        self.bias = None if full.bias is None else nn.Parameter(full.bias.detach().clone())
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, hi - lo) -> (B, out)
        y = _SumPartials.apply(x @ self.weight.t(), self.group)
        return y if self.bias is None else y + self.bias


@dataclass(frozen=True)
class FeatureSlice:
    lo: int
    hi: int
    widths: tuple[int, ...]  # columns held by each rank

    def take(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """This rank's columns of the first input (the one the feature layer reads)."""
        return (inputs[0][:, self.lo : self.hi], *inputs[1:])


def feature_slice(in_features: int, rank: int, ranks: int) -> FeatureSlice:
    widths = tuple(in_features // ranks + (r < in_features % ranks) for r in range(ranks))
    lo = sum(widths[:rank])
    return FeatureSlice(lo, lo + widths[rank], widths)


def apply_feature_partition(model: nn.Module, feature_layer: str, rank: int, ranks: int, group) -> FeatureSlice:
    """Replace `feature_layer` in place by this rank's FeatureShardLinear."""
    full = model.get_submodule(feature_layer)
    part = feature_slice(full.in_features, rank, ranks)
    parent, _, attr = feature_layer.rpartition(".")
    model.get_submodule(parent).register_module(attr, FeatureShardLinear(full, part.lo, part.hi, group))
    return part


def gather_columns(local: torch.Tensor, part: FeatureSlice, group) -> torch.Tensor:
    """The full weight (out, in) from every rank's columns (collective over `group`)."""
    widest = max(part.widths)
    padded = torch.zeros(local.shape[0], widest, dtype=local.dtype, device=local.device)
    padded[:, : local.shape[1]] = local.detach()
    pieces = [torch.empty_like(padded) for _ in part.widths]
    dist.all_gather(pieces, padded, group=group)
    return torch.cat([p[:, :w] for p, w in zip(pieces, part.widths)], dim=1)
