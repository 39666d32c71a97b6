"""Deterministic initialisation of the built-in families, one parameter at a time.

Every parameter's full tensor is a pure function of (seed, its name, its shape, its rule):
the tensor is cut along dim 0 into blocks of whole rows (about BLOCK_ELEMENTS values each)
and block b is drawn by its own torch.Generator, seeded from a stable hash of
(seed, name, b). So any box of the tensor (a tensor-parallel or FSDP shard, a pipeline
stage's parameters, a feature partition's columns) can be filled by drawing only the
blocks that hold its rows, one block at a time: a rank never holds more than its own
values plus one block. A single-process build fills every box whole and gets the same
values. A tied alias (GPT's head.out.weight) is drawn under its owner's name.

The distributions are the families' usual ones; only the random source is per parameter:
  gpt2           GPT-2 (Radford et al. 2019; nanoGPT): Linear and Embedding weights
                 N(0, 0.02), biases 0                              (gpt, llama)
  torch_default  PyTorch's reset_parameters: Linear/Conv weights kaiming_uniform(a=sqrt(5)),
                 i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), biases the same bound;
                 Embedding N(0, 1)                                  (mlp, cnn, wide_linear)
Stacked expert weights (models/moe.py, (E, in, out)) follow the Linear rule of one expert.
Norms (LayerNorm, RMSNorm, GroupNorm) start at weight 1, bias 0 in both. Values are drawn
in float32 and cast to the parameter's dtype (as building in float32 and converting did).

Constant buffers (causal masks, rotary tables) are not drawn: a module that owns one
recomputes it on its current device in `init_buffers()`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn

from autopar.models.moe import GroupedExperts

BLOCK_ELEMENTS = 1 << 20  # values per generator stream: 4 MiB of float32, the most a rank draws beyond its shard
GPT2_STD = 0.02  # Radford et al. 2019, as nanoGPT and Megatron-LM initialise
_NORMS = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class InitScheme(str, Enum):
    GPT2 = "gpt2"
    TORCH_DEFAULT = "torch_default"


class Dist(str, Enum):
    NORMAL = "normal"  # N(0, scale^2)
    UNIFORM = "uniform"  # U(-scale, scale)
    ZEROS = "zeros"
    ONES = "ones"


@dataclass(frozen=True)
class ParamInit:
    """How one parameter's full tensor is drawn."""

    dist: Dist
    scale: float  # std (normal) or bound (uniform); 0 for the constants
    shape: tuple[int, ...]  # the full tensor's shape (a shard's box lies inside it)
    key: str  # the name its random streams are seeded with (a tied alias: its owner's)


def init_table(model: nn.Module, scheme: InitScheme) -> dict[str, ParamInit]:
    """ParamInit of every parameter name of the whole model, tied aliases included."""
    table: dict[str, ParamInit] = {}
    owners: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owner = owners.setdefault(id(p), name)
        if owner != name:
            table[name] = table[owner]
            continue
        parent, _, attr = name.rpartition(".")
        kind, scale = _rule(model.get_submodule(parent), attr, scheme, name)
        table[name] = ParamInit(kind, scale, tuple(p.shape), name)
    return table


def _rule(module: nn.Module, attr: str, scheme: InitScheme, name: str) -> tuple[Dist, float]:
    if isinstance(module, _NORMS):
        return (Dist.ONES, 0.0) if attr == "weight" else (Dist.ZEROS, 0.0)
    if isinstance(module, nn.Embedding):
        return Dist.NORMAL, GPT2_STD if scheme is InitScheme.GPT2 else 1.0
    if isinstance(module, (nn.Linear, *_CONVS)) and attr in ("weight", "bias"):
        if scheme is InitScheme.GPT2:
            return (Dist.NORMAL, GPT2_STD) if attr == "weight" else (Dist.ZEROS, 0.0)
        fan_in = math.prod(module.weight.shape[1:])  # (out, in, *kernel): in * kernel
        return Dist.UNIFORM, 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    if isinstance(module, GroupedExperts):  # (E, in, out) stacks: each expert as a Linear of fan-in `in`
        if scheme is InitScheme.GPT2:
            return Dist.NORMAL, GPT2_STD
        return Dist.UNIFORM, 1.0 / math.sqrt(getattr(module, attr).shape[1])
    raise TypeError(f"no initialisation rule for {name} ({type(module).__name__}.{attr}); add one to autopar/models/init.py")


# ------------------------------------------------------------------ drawing


def fill_(dst: torch.Tensor, init: ParamInit, seed: int, offset: tuple[int, ...] | None = None) -> torch.Tensor:
    """dst := the box of `init`'s full tensor that starts at `offset` (default: the origin)
    and has dst's shape; dst may be any dtype and device. Draws one block at a time."""
    if init.dist is Dist.ZEROS:
        return dst.zero_()
    if init.dist is Dist.ONES:
        return dst.fill_(1.0)
    shape = init.shape or (1,)  # a 0-d parameter is one row of one value
    out = dst.view(1) if dst.dim() == 0 else dst
    offset = tuple(offset) if offset else (0,) * len(shape)
    if out.dim() != len(shape) or len(offset) != len(shape) or any(o < 0 or o + n > full for o, n, full in zip(offset, out.shape, shape)):
        raise ValueError(f"box at {offset} of shape {tuple(out.shape)} lies outside {init.key}'s {tuple(shape)}")
    rows_per_block = max(1, BLOCK_ELEMENTS // max(1, math.prod(shape[1:])))
    lo, hi = offset[0], offset[0] + out.shape[0]
    for block in range(lo // rows_per_block, -(-hi // rows_per_block)):
        first = block * rows_per_block
        values = _draw(init, seed, block, (min(rows_per_block, shape[0] - first), *shape[1:]))  # (rows, *shape[1:])
        a, z = max(lo, first), min(hi, first + values.shape[0])
        piece = values[a - first : z - first]
        for d in range(1, len(shape)):
            piece = piece.narrow(d, offset[d], out.shape[d])
        out[a - lo : z - lo].copy_(piece)
    return dst


def _draw(init: ParamInit, seed: int, block: int, shape: tuple[int, ...]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(stream_seed(seed, init.key, block))
    values = torch.empty(shape, dtype=torch.float32)
    if init.dist is Dist.NORMAL:
        return values.normal_(0.0, init.scale, generator=gen)
    return values.uniform_(-init.scale, init.scale, generator=gen)


def stream_seed(seed: int, key: str, block: int) -> int:
    """A 63-bit generator seed from (seed, name, block), the same in every process and run."""
    digest = hashlib.blake2b(f"{seed}/{key}/{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


# ------------------------------------------------------------------ whole modules


def init_buffers_(module: nn.Module) -> None:
    """Recompute every constant buffer on its device (the modules that own one say how)."""
    for m in module.modules():
        if callable(getattr(m, "init_buffers", None)):
            m.init_buffers()


def tied_parameters(module: nn.Module) -> list[list[str]]:
    """Groups of parameter names that share one tensor (the first name owns it)."""
    by_id: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def retie_(module: nn.Module, ties: list[list[str]]) -> None:
    """Point every alias at its owner's parameter again (to_empty, and DTensor's
    parallelize_module, make a new parameter for each name)."""
    for owner, *aliases in ties:
        param = module.get_parameter(owner)
        for alias in aliases:
            parent, _, attr = alias.rpartition(".")
            target = module.get_submodule(parent)
            old = getattr(target, attr)
            if getattr(old, "placements", None) != getattr(param, "placements", None):
                raise RuntimeError(f"cannot re-tie {alias} to {owner}: placements {old.placements} != {param.placements}")
            setattr(target, attr, param)


def materialize_(module: nn.Module, scheme: InitScheme, seed: int, device: str | torch.device) -> nn.Module:
    """A whole meta-device model, moved to `device` and initialised: every parameter full."""
    table = init_table(module, scheme)
    ties = tied_parameters(module)
    module.to_empty(device=device)
    retie_(module, ties)
    with torch.no_grad():
        for name, p in module.named_parameters():
            fill_(p, table[name], seed)
        init_buffers_(module)
    return module
