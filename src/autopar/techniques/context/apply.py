"""Context parallelism at run time (the all-gather variant Llama 3 trains with; torch's
`context_parallel` needs CUDA/XPU scaled-dot-product kernels, so the built-in decoders'
attention gathers itself).

Rank r of a cp group holds positions [r c, (r+1) c) and [(2 cp - 1 - r) c, (2 cp - r) c) of
every sample, c = T / (2 cp): with a causal mask each rank then has the same attention
work (zigzag). The trainer cuts its inputs and targets to those positions
(Parallelized.seq_positions); the embedding (learned positions) and the rotary tables take
them; each CoreAttention all-gathers K and V along the sequence with autograd (backward:
reduce-scatter of their gradients) and masks keys whose position is after the query's.
Data parallelism then averages gradients over the dp x cp ranks (runtime/mesh.py dp_cp).
"""

from __future__ import annotations

import torch
from torch.distributed._functional_collectives import all_gather_tensor_autograd

from autopar.models.attention import CoreAttention
from autopar.models.gpt import GPTEmbedding
from autopar.models.llama import LlamaAttention
from autopar.runtime.parallelized import Parallelized


def zigzag_positions(seq_len: int, rank: int, cp: int) -> torch.Tensor:
    """Positions (T / cp,) rank `rank` of `cp` holds: chunks rank and 2 cp - 1 - rank."""
    c = seq_len // (2 * cp)
    first, second = rank * c, (2 * cp - 1 - rank) * c
    return torch.cat([torch.arange(first, first + c), torch.arange(second, second + c)])


def apply(par: Parallelized) -> None:
    s, ctx = par.strategy, par.ctx
    seq_len = par.facts.seq_len
    mine = zigzag_positions(seq_len, ctx.coords.cp, s.cp).to(ctx.device)
    keys = torch.cat([zigzag_positions(seq_len, r, s.cp) for r in range(s.cp)]).to(ctx.device)  # gathered order
    group = ctx.mesh["cp"].get_group()
    cores = 0
    for chunk in par.chunks:
        for mod in chunk.module.modules():
            if isinstance(mod, (GPTEmbedding, LlamaAttention)):
                mod.positions = mine
            if isinstance(mod, CoreAttention):
                mod.positions, mod.key_positions = mine, keys
                mod.gather = _Gather(group, s.cp)
                cores += 1
    par.seq_positions = mine
    par.applied.append(f"context(cp={s.cp}: {mine.numel()} of {seq_len} positions per rank, zigzag; "
                       f"{cores} attention cores all-gather K/V)")


class _Gather:
    """All-gather along the sequence (dim -2) over the cp group, with autograd."""

    def __init__(self, group, size: int):
        self.group, self.size = group, size

    def __call__(self, t: torch.Tensor) -> torch.Tensor:  # (B, nh, T_local, hd) -> (B, nh, T, hd)
        if t.is_meta:  # shape inference (pipeline stages)
            return t.new_empty(*t.shape[:-2], t.shape[-2] * self.size, t.shape[-1])
        return all_gather_tensor_autograd(t.contiguous(), gather_dim=t.dim() - 2, group=self.group)
