"""Llama decoder (Touvron et al. 2023): RMSNorm, rotary positions, SwiGLU, grouped-query attention.

Rotary embeddings use real cos/sin tables (no complex tensors) so DTensor and the
meta device handle them. Parameters per layer: h*(h + 2*kv*hd) + h*h + 3*h*ffn + 2h.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from autopar.models.attention import CoreAttention, DecoderLM, NormHead, merge_heads, on_meta, split_heads
from autopar.models.moe import MoE
from autopar.spec.recipe import LlamaSpec


def rotary_tables(seq_len: int, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, hd/2)."""
    if on_meta():  # shapes only (the trigonometry's meta decompositions cost seconds)
        return torch.empty(seq_len, head_dim // 2), torch.empty(seq_len, head_dim // 2)
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., ::2], x[..., 1::2]) of x (B, nh, T, hd) by the position angles."""
    T = x.shape[-2]
    cos, sin = cos[:T].to(x.dtype), sin[:T].to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class LlamaAttention(nn.Module):
    def __init__(self, spec: LlamaSpec):
        super().__init__()
        h, hd = spec.hidden, spec.hidden // spec.heads
        self.head_dim = hd
        self.n_rep = spec.heads // spec.n_kv_heads  # query heads per kv head
        self.wq = nn.Linear(h, spec.heads * hd, bias=False)
        self.wk = nn.Linear(h, spec.n_kv_heads * hd, bias=False)
        self.wv = nn.Linear(h, spec.n_kv_heads * hd, bias=False)
        self.core = CoreAttention(spec.seq_len, spec.dropout)
        self.wo = nn.Linear(spec.heads * hd, h, bias=False)
        cos, sin = rotary_tables(spec.seq_len, hd)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.positions: Optional[torch.Tensor] = None  # context parallelism: the positions this rank's tokens hold

    def init_buffers(self) -> None:
        cos, sin = rotary_tables(self.cos.shape[0], self.head_dim)  # float32 on the CPU, then cast
        self.cos.copy_(cos)
        self.sin.copy_(sin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cos, sin = (self.cos, self.sin) if self.positions is None else (self.cos[self.positions], self.sin[self.positions])
        q = apply_rotary(split_heads(self.wq(x), self.head_dim), cos, sin)
        k = apply_rotary(split_heads(self.wk(x), self.head_dim), cos, sin)
        v = split_heads(self.wv(x), self.head_dim)
        if self.core.gather is not None:  # context parallel: gather the kv heads before they are repeated (n_rep x fewer bytes)
            k, v = self.core.gather(k), self.core.gather(v)
        if self.n_rep > 1:  # (B, kv, T, hd) -> (B, kv*n_rep, T, hd)
            k = k.repeat_interleave(self.n_rep, dim=1)
            v = v.repeat_interleave(self.n_rep, dim=1)
        return self.wo(merge_heads(self.core(q, k, v)))


class LlamaMLP(nn.Module):
    def __init__(self, spec: LlamaSpec):
        super().__init__()
        self.w1 = nn.Linear(spec.hidden, spec.ffn, bias=False)  # gate
        self.w3 = nn.Linear(spec.hidden, spec.ffn, bias=False)  # up
        self.w2 = nn.Linear(spec.ffn, spec.hidden, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class LlamaBlock(nn.Module):
    def __init__(self, spec: LlamaSpec):
        super().__init__()
        self.attn_norm = nn.RMSNorm(spec.hidden, eps=1e-5)
        self.attn = LlamaAttention(spec)
        self.ffn_norm = nn.RMSNorm(spec.hidden, eps=1e-5)
        self.mlp = MoE(spec.hidden, spec.ffn, spec.experts, spec.top_k, gated=True) if spec.experts else LlamaMLP(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.ffn_norm(x))


class LlamaEmbedding(nn.Module):
    def __init__(self, spec: LlamaSpec):
        super().__init__()
        self.tok = nn.Embedding(spec.vocab, spec.hidden)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tok(tokens)


class Llama(DecoderLM):
    def __init__(self, spec: LlamaSpec):
        head = NormHead(nn.RMSNorm(spec.hidden, eps=1e-5), spec.hidden, spec.vocab)
        super().__init__(LlamaEmbedding(spec), [LlamaBlock(spec) for _ in range(spec.layers)], head, spec.tie_embeddings)

    @staticmethod
    def tp_plan() -> dict[str, str]:
        """Megatron tensor parallelism, one line per submodule (fnmatch patterns)."""
        return {
            "embed.tok": "vocab_embedding",
            "layers.*.attn.wq": "colwise",
            "layers.*.attn.wk": "colwise",
            "layers.*.attn.wv": "colwise",
            "layers.*.attn.wo": "rowwise",
            "layers.*.mlp.w1": "colwise",
            "layers.*.mlp.w3": "colwise",
            "layers.*.mlp.w2": "rowwise",
            "head.out": "vocab_head",
        }
