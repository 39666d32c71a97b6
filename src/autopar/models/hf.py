"""Hugging Face transformers models, built offline from a config class (nothing downloaded)."""

from __future__ import annotations

import torch
from torch import nn

from autopar.errors import InputError
from autopar.spec.recipe import TransformersSpec


class CausalLMLogits(nn.Module):
    """Wraps a transformers causal LM so forward(tokens) returns logits (B, T, V)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # An explicit 4-D additive causal mask: transformers then skips the data-dependent
        # mask analysis (padding, packed sequences) that cannot run on the meta device.
        B, T = tokens.shape
        dtype = next(self.model.parameters()).dtype
        causal = torch.full((T, T), float("-inf"), device=tokens.device, dtype=dtype).triu(1)
        mask = causal.expand(B, 1, T, T)
        return self.model(input_ids=tokens, attention_mask=mask, use_cache=False).logits


def build_transformers(spec: TransformersSpec):
    from autopar.models import ModelDef, TensorSpec
    from autopar.models.attention import token_cross_entropy

    try:
        import transformers
    except ImportError:
        raise InputError("model.transformers", spec.config_name, "needs the optional extra: pip install 'autopar[transformers]'") from None
    config_cls = getattr(transformers, spec.config_name, None)
    if config_cls is None:
        raise InputError("model.transformers.config", spec.config_name, "not a transformers config class, e.g. LlamaConfig or GPT2Config")
    try:
        config = config_cls(**spec.config_kwargs)
        model = transformers.AutoModelForCausalLM.from_config(config)
    except Exception as err:  # noqa: BLE001 - report the library's complaint in one line
        raise InputError("model.transformers", spec.config_kwargs, f"{spec.config_name} rejected it ({type(err).__name__}: {err})") from None
    vocab = int(config.vocab_size)
    tokens = TensorSpec((spec.seq_len,), torch.int64, high=vocab)
    return ModelDef(CausalLMLogits(model), (tokens,), tokens, token_cross_entropy, spec.config_name)
