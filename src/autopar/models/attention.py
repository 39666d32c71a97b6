"""Pieces shared by the built-in transformer families.

`CoreAttention` is its own submodule (as in Megatron-LM) so that selective
recomputation can checkpoint exactly the attention core: QK^T, softmax,
dropout and the product with V (Korthikanti et al. 2022, Sec. 5).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from autopar.models.init import InitScheme


class CoreAttention(nn.Module):
    """softmax(Q K^T / sqrt(d) + causal mask) V for q, k, v of shape (B, nh, T, hd)."""

    def __init__(self, seq_len: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.register_buffer("mask", torch.empty(seq_len, seq_len, dtype=torch.bool), persistent=False)
        # context parallelism (techniques/context/apply.py): this rank's query positions (T_local,),
        # every rank's key positions in gathered order (T,), and the all-gather along the sequence
        self.positions: Optional[torch.Tensor] = None
        self.key_positions: Optional[torch.Tensor] = None
        self.gather: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
        if not on_meta():  # on meta: shapes only (`triu` there costs seconds of decomposition)
            self.init_buffers()

    def init_buffers(self) -> None:
        T = self.mask.shape[0]
        self.mask.copy_(torch.ones(T, T, dtype=torch.bool, device=self.mask.device).triu(1))  # True above the diagonal

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        T = q.shape[-2]
        if self.gather is not None:  # local queries against every rank's keys: causal by position
            if k.shape[-2] == T:  # not gathered by the caller yet (Llama gathers its kv heads before repeating them)
                k, v = self.gather(k), self.gather(v)  # (B, nh, T_local, hd) -> (B, nh, T, hd)
            mask = self.key_positions[None, :] > self.positions[:, None]  # (T_local, T)
        else:
            mask = self.mask[:T, :T]
        scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)  # (B, nh, T_q, T_k)
        scores = scores.masked_fill(mask, float("-inf"))
        probs = self.dropout(F.softmax(scores, dim=-1))
        return probs @ v  # (B, nh, T, hd)


def on_meta() -> bool:
    """Whether new tensors land on the meta device (inside `with torch.device("meta")`)."""
    return torch.empty(0).device.type == "meta"


def dropout_or_identity(p: float) -> nn.Module:
    return nn.Dropout(p) if p > 0 else nn.Identity()


def split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(B, T, nh*hd) -> (B, nh, T, hd). nh is read from the tensor so tensor parallel
    shards (which hold nh/tp heads) work unchanged."""
    B, T, _ = x.shape
    return x.view(B, T, -1, head_dim).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, nh, T, hd) -> (B, T, nh*hd)."""
    B, nh, T, hd = x.shape
    return x.transpose(1, 2).reshape(B, T, nh * hd)


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Losses in at least fp32, as Megatron does: bf16/fp16 upcast; fp64 stays fp64 (equivalence tests)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def token_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss; logits (B, T, V), target (B, T)."""
    return F.cross_entropy(at_least_fp32(logits.flatten(0, 1)), target.flatten(0, 1))


class NormHead(nn.Module):
    """Final norm and the output projection to the vocabulary: (B, T, h) -> (B, T, V)."""

    def __init__(self, norm: nn.Module, hidden: int, vocab: int):
        super().__init__()
        self.norm = norm
        self.out = nn.Linear(hidden, vocab, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(x))


class DecoderLM(nn.Module):
    """embed -> layers (identical blocks) -> head: the layout pipelining cuts (between
    blocks, the embedding riding with the first, the head with the last). Weights are
    drawn by autopar.models.init (GPT-2's), not by the constructor."""

    init_scheme = InitScheme.GPT2
    block_stacks = ("layers",)  # the stack a pipeline cuts and recomputation checkpoints (profile/structure.py)

    def __init__(self, embed: nn.Module, blocks: list, head: NormHead, tie_embeddings: bool):
        super().__init__()
        self.embed = embed
        self.layers = nn.ModuleList(blocks)
        self.head = head
        if tie_embeddings:
            self.head.out.weight = self.embed.tok.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)
