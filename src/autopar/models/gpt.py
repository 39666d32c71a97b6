"""GPT-2/3 decoder (Radford et al. 2019; Brown et al. 2020), laid out as Megatron-LM counts it.

Parameters: 12 l h^2 + 13 l h + (V + s) h (+ 2h final norm) with a tied head,
Megatron-LM SC'21 Eq. 2. q, k, v are separate Linears so tensor parallelism can
shard each by columns (one head group per rank).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from autopar.models.attention import CoreAttention, DecoderLM, NormHead, dropout_or_identity, merge_heads, split_heads
from autopar.models.moe import MoE
from autopar.spec.recipe import GPTSpec


class GPTEmbedding(nn.Module):
    def __init__(self, spec: GPTSpec):
        super().__init__()
        self.tok = nn.Embedding(spec.vocab, spec.hidden)
        self.pos = nn.Embedding(spec.seq_len, spec.hidden)
        self.drop = dropout_or_identity(spec.dropout)
        self.positions: Optional[torch.Tensor] = None  # context parallelism: the positions this rank's tokens hold

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, h)
        positions = self.positions if self.positions is not None else torch.arange(tokens.shape[1], device=tokens.device)
        return self.drop(self.tok(tokens) + self.pos(positions))


class GPTAttention(nn.Module):
    def __init__(self, spec: GPTSpec):
        super().__init__()
        h = spec.hidden
        self.head_dim = h // spec.heads
        self.q = nn.Linear(h, h, bias=spec.bias)
        self.k = nn.Linear(h, h, bias=spec.bias)
        self.v = nn.Linear(h, h, bias=spec.bias)
        self.core = CoreAttention(spec.seq_len, spec.dropout)
        self.proj = nn.Linear(h, h, bias=spec.bias)
        self.drop = dropout_or_identity(spec.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, h)
        q, k, v = (split_heads(f(x), self.head_dim) for f in (self.q, self.k, self.v))
        return self.drop(self.proj(merge_heads(self.core(q, k, v))))


class GPTMLP(nn.Module):
    def __init__(self, spec: GPTSpec):
        super().__init__()
        self.fc1 = nn.Linear(spec.hidden, spec.ffn, bias=spec.bias)
        self.fc2 = nn.Linear(spec.ffn, spec.hidden, bias=spec.bias)
        self.drop = dropout_or_identity(spec.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


class GPTBlock(nn.Module):
    def __init__(self, spec: GPTSpec):
        super().__init__()
        self.ln1 = nn.LayerNorm(spec.hidden)
        self.attn = GPTAttention(spec)
        self.ln2 = nn.LayerNorm(spec.hidden)
        self.mlp = MoE(spec.hidden, spec.ffn, spec.experts, spec.top_k, gated=False) if spec.experts else GPTMLP(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(DecoderLM):
    def __init__(self, spec: GPTSpec):
        head = NormHead(nn.LayerNorm(spec.hidden), spec.hidden, spec.vocab)
        super().__init__(GPTEmbedding(spec), [GPTBlock(spec) for _ in range(spec.layers)], head, spec.tie_embeddings)

    @staticmethod
    def tp_plan() -> dict[str, str]:
        """Megatron tensor parallelism, one line per submodule (fnmatch patterns)."""
        return {
            "embed.tok": "vocab_embedding",
            "layers.*.attn.q": "colwise",
            "layers.*.attn.k": "colwise",
            "layers.*.attn.v": "colwise",
            "layers.*.attn.proj": "rowwise",
            "layers.*.mlp.fc1": "colwise",
            "layers.*.mlp.fc2": "rowwise",
            "head.out": "vocab_head",
        }
