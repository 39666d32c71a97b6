"""Mixture-of-experts feed-forward layer: token-choice top-k routing, dropless.

A router Linear scores every token against E experts; each token goes to its k best,
weighted by their softmax probabilities renormalised over the k (Mixtral, Jiang et al.
2024). No token is dropped (no capacity factor: MegaBlocks, Gale et al. 2023), so the
layer computes the same function however its experts are placed: expert parallelism
(techniques/expert) only moves rows between ranks.

  x (N, h) -> router (N, E) -> top-k (N, k) -> rows sorted by expert (N k, h)
           -> GroupedExperts: expert e maps its counts[e] rows (N k, h) -> (N k, h)
           -> weighted sum back per token (N, h)

The experts are stacked weights, w1 (E, h, f) and w2 (E, f, h) (+ w3 (E, h, f) for SwiGLU
experts), as torchtitan stores them, so a rank holding experts [a, b) holds one slice of
each. On the meta device (profiling) routing has no values: the rows are taken as
spread evenly over the experts, the balanced load the cost model prices (with its
imbalance factor on top).
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

Dispatch = Callable[["GroupedExperts", torch.Tensor, torch.Tensor], torch.Tensor]


def rows_per_expert(counts: torch.Tensor, rows: int) -> list[int]:
    """counts (E,) as Python ints; on the meta device, `rows` spread evenly (the first take the rest)."""
    if counts.is_meta:
        experts = counts.numel()
        return [rows // experts + (e < rows % experts) for e in range(experts)]
    return counts.tolist()


class GroupedExperts(nn.Module):
    """E feed-forward experts with stacked weights; `dispatch` (set by expert parallelism)
    replaces the local computation by one that sends rows to the ranks holding their experts."""

    def __init__(self, experts: int, hidden: int, ffn: int, gated: bool):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(experts, hidden, ffn))
        self.w2 = nn.Parameter(torch.empty(experts, ffn, hidden))
        self.w3 = nn.Parameter(torch.empty(experts, hidden, ffn)) if gated else None
        self.dispatch: Optional[Dispatch] = None

    @property
    def local_experts(self) -> int:
        return self.w1.shape[0]

    def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:  # (N k, h) sorted by expert, (E,)
        if self.dispatch is not None:
            return self.dispatch(self, x, counts)
        return self.compute(x, rows_per_expert(counts, x.shape[0]), list(range(self.local_experts)))

    def compute(self, x: torch.Tensor, sizes: list[int], experts: list[int]) -> torch.Tensor:
        """Rows x split into len(sizes) runs; run i goes through local expert experts[i]. The
        stacks are unbound once (backward: one stack of the experts' gradients; indexing
        w[e] per expert would write a zero-filled full-size gradient per expert)."""
        w1, w2 = self.w1.to(x.dtype).unbind(0), self.w2.to(x.dtype).unbind(0)
        w3 = self.w3.to(x.dtype).unbind(0) if self.w3 is not None else None
        outs = []
        for e, rows in zip(experts, x.split(sizes)):
            hid = rows @ w1[e]
            hid = F.silu(hid) * (rows @ w3[e]) if w3 is not None else F.gelu(hid)
            outs.append(hid @ w2[e])
        return torch.cat(outs) if outs else x.new_zeros(0, self.w2.shape[-1])


class MoE(nn.Module):
    """Router + GroupedExperts in place of a block's MLP (same input and output shapes)."""

    def __init__(self, hidden: int, ffn: int, experts: int, top_k: int, gated: bool):
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(hidden, experts, bias=False)
        self.experts = GroupedExperts(experts, hidden, ffn, gated)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, h) -> (B, T, h)
        shape, k = x.shape, self.top_k
        tokens = x.reshape(-1, shape[-1])  # (N, h)
        # routing probabilities in at least float32 (bf16 logits would tie and flip choices)
        probs = F.softmax(self.router(tokens), dim=-1, dtype=torch.promote_types(x.dtype, torch.float32))  # (N, E)
        weights, chosen = probs.topk(k, dim=-1)  # (N, k)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        flat = chosen.reshape(-1)  # (N k,) expert of each (token, choice)
        order = flat.argsort(stable=True)  # rows grouped by expert, tokens in order inside each
        counts = torch.zeros(probs.shape[-1], dtype=torch.int64, device=x.device).scatter_add_(0, flat, torch.ones_like(flat))
        token = order // k
        out = self.experts(tokens[token], counts)  # (N k, h)
        out = out * weights.reshape(-1)[order].unsqueeze(-1)
        return torch.zeros_like(tokens).index_add_(0, token, out).reshape(shape)


# transformers' experts interface (Mixtral, Qwen2/3-MoE, OLMoE, ...): a module holding every
# expert's weights stacked on dim 0, called as forward(hidden_states (N, h), top_k_index
# (N, k), top_k_weights (N, k)) -> (N, h); an index equal to num_experts is skipped.
LIBRARY_EXPERTS_ARGS = ("hidden_states", "top_k_index", "top_k_weights")


def library_experts(m: nn.Module) -> int:
    """E when `m` follows transformers' experts interface with every parameter stacked over
    its E experts (so a rank may keep a slice of each), else 0."""
    experts, hidden = getattr(m, "num_experts", None), getattr(m, "hidden_dim", None)
    if not isinstance(experts, int) or not isinstance(hidden, int) or experts < 2:
        return 0
    try:
        names = tuple(inspect.signature(type(m).forward).parameters)[1:4]
    except (TypeError, ValueError):
        return 0
    params = list(m.parameters(recurse=False))
    stacked = params and all(p.dim() >= 2 and p.shape[0] == experts for p in params)
    leaf = not any(True for c in m.children() for _ in c.parameters())
    return experts if names == LIBRARY_EXPERTS_ARGS and stacked and leaf else 0


def expert_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every module expert parallelism splits: models/moe.py's GroupedExperts and the
    library's stacked experts, with their names."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, GroupedExperts) or library_experts(m)]
