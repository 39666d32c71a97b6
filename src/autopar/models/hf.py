"""Hugging Face transformers models, built offline from a config class (nothing downloaded).

One wrapper per task turns a transformers model into what the rest of autopar
expects: forward(*tensors) -> logits, the loss of the recipe's task:
  causal_lm, masked_lm    tokens (B, T)                      -> logits (B, T, V), token cross-entropy
  seq2seq_lm              tokens (B, T), decoder tokens (B, U) -> logits (B, U, V), token cross-entropy
  sequence_classification tokens (B, T)                      -> logits (B, classes), cross-entropy
  image_classification    pixels (B, C, S, S)                -> logits (B, classes), cross-entropy
Every wrapper holds the transformers model as `self.model`: parameter names are the
library's, prefixed "model.". Attention is built as "sdpa" where the class offers it
(profiled as the fused kernel, see profile/trace.py), else the library's default.
"""

from __future__ import annotations

from contextlib import nullcontext
from fnmatch import fnmatch
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from autopar.errors import InputError
from autopar.spec.recipe import TransformersSpec


def output_logits(out: Any) -> torch.Tensor:
    """The logits of a transformers ModelOutput (or of any dict / tuple / tensor output)."""
    if isinstance(out, torch.Tensor):
        return out
    logits = out.get("logits") if hasattr(out, "get") else None
    if logits is not None:
        return logits
    if isinstance(out, (tuple, list)) or hasattr(out, "to_tuple"):
        return out[0]
    raise TypeError(f"{type(out).__name__} has no logits")


class _TaskWrapper(nn.Module):
    """Holds the transformers model; on meta, failures become InputErrors naming the module."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def _run(self, first: torch.Tensor, **kwargs) -> torch.Tensor:
        from autopar.profile.trace import meta_kernels, model_errors

        guard = model_errors(self) if first.is_meta else nullcontext()
        kernels = meta_kernels() if first.is_meta else nullcontext()
        if not first.is_meta:
            _experts_for_dtype(self.model)
        with guard, kernels:
            return output_logits(self.model(**kwargs))


def _experts_for_dtype(model: nn.Module) -> None:
    """torch._grouped_mm, transformers' default mixture-of-experts kernel, has no float64
    kernel: a float64 model (our equivalence tests) runs the library's per-expert loop,
    the same function. Profiling on meta keeps grouped_mm (no value-dependent routing)."""
    config = getattr(model, "config", None)
    if getattr(config, "_experts_implementation", None) != "grouped_mm":
        return
    if next(model.parameters()).dtype == torch.float64:
        model.set_experts_implementation("eager")


def _causal_mask(tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # An explicit 4-D additive causal mask (B, 1, T, T): transformers then skips the data-dependent
    # mask analysis (padding, packed sequences) that cannot run on the meta device.
    B, T = tokens.shape
    causal = torch.full((T, T), float("-inf"), device=tokens.device, dtype=dtype).triu(1)
    return causal.expand(B, 1, T, T)


class CausalLMLogits(_TaskWrapper):
    """forward(tokens (B, T)) -> next-token logits (B, T, V)."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = _causal_mask(tokens, next(self.model.parameters()).dtype)
        return self._run(tokens, input_ids=tokens, attention_mask=mask, use_cache=False)


class MaskedLMLogits(_TaskWrapper):
    """forward(tokens (B, T)) -> per-token logits (B, T, V), bidirectional attention."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._run(tokens, input_ids=tokens)


class Seq2SeqLMLogits(_TaskWrapper):
    """forward(tokens (B, T), decoder tokens (B, U)) -> decoder logits (B, U, V)."""

    def forward(self, tokens: torch.Tensor, decoder_tokens: torch.Tensor) -> torch.Tensor:
        return self._run(tokens, input_ids=tokens, decoder_input_ids=decoder_tokens, use_cache=False)


class SequenceClassifierLogits(_TaskWrapper):
    """forward(tokens (B, T)) -> class logits (B, classes)."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._run(tokens, input_ids=tokens)


class ImageClassifierLogits(_TaskWrapper):
    """forward(pixels (B, C, S, S)) -> class logits (B, classes)."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._run(pixels, pixel_values=pixels)


_WRAPPERS = {
    "causal_lm": CausalLMLogits,
    "masked_lm": MaskedLMLogits,
    "seq2seq_lm": Seq2SeqLMLogits,
    "sequence_classification": SequenceClassifierLogits,
    "image_classification": ImageClassifierLogits,
}


def build_transformers(spec: TransformersSpec):
    from autopar.models import ModelDef

    transformers = _import_transformers(spec)
    config_cls = getattr(transformers, spec.config_name, None)
    if config_cls is None or not isinstance(config_cls, type):
        raise InputError("model.transformers.config", spec.config_name, "not a transformers config class, e.g. LlamaConfig or GPT2Config")
    auto = getattr(transformers, spec.auto_class, None)
    if auto is None or not hasattr(auto, "from_config"):
        raise InputError("model.transformers.auto_class", spec.auto_class, "not a transformers auto class, e.g. AutoModelForMaskedLM")
    try:
        config = config_cls(**spec.config_kwargs)
    except Exception as err:  # noqa: BLE001 - report the library's complaint in one line
        raise InputError("model.transformers", spec.config_kwargs, f"{spec.config_name} rejected it ({type(err).__name__}: {err})") from None
    model = _from_config(auto, config, spec)
    inputs, target, loss = _task_io(spec, config)
    wrapper = _WRAPPERS[spec.task](model)
    plan, local_attrs = library_tp_plan(wrapper, config), ()
    if plan is None:
        plan, local_attrs = declared_tp_plan(wrapper, config)
    return ModelDef(wrapper, inputs, target, loss, spec.config_name, tp_plan=plan, active_params=active_params(model, config), moe=moe_shape(config),
                    head_units=_head_units(config) if plan else (), tp_local_attrs=local_attrs)


_LINEAR_STYLES = {"colwise": "colwise", "rowwise": "rowwise"}  # transformers' names -> ours (TPStyle)


def library_tp_plan(wrapper: nn.Module, config) -> Optional[dict[str, str]]:
    """transformers' own tensor-parallel plan (config.base_model_tp_plan: attention q/k/v
    column, o row; MLP gate/up column, down row), as patterns over the wrapper's names;
    only its column/row entries on nn.Linear modules (packed expert weights and the
    library's other styles are left whole). None where the library has no plan: then the
    profiler's Linear pairs are used."""
    plan = getattr(config, "base_model_tp_plan", None) or {}
    prefix = f"model.{wrapper.model.base_model_prefix}." if getattr(wrapper.model, "base_model_prefix", "") else "model."
    linears = [n for n, m in wrapper.named_modules() if isinstance(m, nn.Linear)]
    out = {}
    for pattern, style in plan.items():
        full = prefix + pattern
        if style in _LINEAR_STYLES and any(fnmatch(n, full) for n in linears):
            out[full] = _LINEAR_STYLES[style]
    return out or None


# Megatron plans for model types whose config declares none, read from transformers 5's
# modeling code. Patterns are under the wrapper ("model." + the library's names). Each
# rank's attention then holds H / tp heads; the attributes its forward reads to cut or view
# heads are divided by tp on that rank (`local_attrs`), so the same code computes its heads.
#   gpt2  GPT2Attention.forward: c_attn(x).split(self.split_size, dim=2), views (..., -1, head_dim);
#         c_attn is one Conv1D making [q | k | v]: each part split (packed_qkv)
#   t5    T5Attention.forward: q/k/v(x).view(..., -1, d_kv); the relative-position bias
#         Embedding(buckets, n_heads) gives one column per head (split with them); the
#         bias-less layers build zeros (1, self.n_heads, T, S)
_DECLARED_TP: dict[str, tuple[tuple[tuple[str, str], ...], tuple[tuple[str, tuple[str, ...]], ...]]] = {
    "gpt2": ((("model.*.attn.c_attn", "packed_qkv"), ("model.*.attn.c_proj", "rowwise"),
              ("model.*.mlp.c_fc", "colwise"), ("model.*.mlp.c_proj", "rowwise")),
             (("model.*.attn", ("split_size", "num_heads")),)),
    "t5": (tuple((f"model.*.{a}.{p}", "colwise") for a in ("SelfAttention", "EncDecAttention") for p in "qkv")
           + (("model.*.SelfAttention.o", "rowwise"), ("model.*.EncDecAttention.o", "rowwise"),
              ("model.*.relative_attention_bias", "colwise"),
              ("model.*.DenseReluDense.wi", "colwise"), ("model.*.DenseReluDense.wi_0", "colwise"),
              ("model.*.DenseReluDense.wi_1", "colwise"), ("model.*.DenseReluDense.wo", "rowwise")),
           (("model.*.SelfAttention", ("n_heads", "inner_dim")), ("model.*.EncDecAttention", ("n_heads", "inner_dim")))),
}


def declared_tp_plan(wrapper: nn.Module, config) -> tuple[Optional[dict[str, str]], tuple[tuple[str, tuple[str, ...]], ...]]:
    """The declared plan of `config.model_type` and its per-rank attributes; (None, ()) where
    there is none or the built model lacks a named attribute (another library version)."""
    declared = _DECLARED_TP.get(getattr(config, "model_type", ""))
    if declared is None:
        return None, ()
    plan, local_attrs = declared
    names = dict(wrapper.named_modules())
    for pattern, attrs in local_attrs:
        for name, module in names.items():
            if fnmatch(name, pattern) and not all(isinstance(getattr(module, a, None), int) for a in attrs):
                return None, ()
    if not any(fnmatch(n, pattern) for pattern, _ in plan for n in names):
        return None, ()
    return dict(plan), local_attrs


def _head_units(config) -> tuple[tuple[str, int], ...]:
    """Attention heads a tensor-parallel degree must divide (each rank keeps whole heads)."""
    heads = getattr(config, "num_attention_heads", None)
    kv = getattr(config, "num_key_value_heads", None) or heads
    return tuple((k, int(v)) for k, v in (("num_attention_heads", heads), ("num_key_value_heads", kv)) if v)


def _import_transformers(spec: TransformersSpec):
    try:
        import transformers
    except ImportError:
        raise InputError("model.transformers", spec.config_name, "needs the optional extra: pip install 'autopar[transformers]'") from None
    return transformers


def _from_config(auto, config, spec: TransformersSpec) -> nn.Module:
    """Build with fused (sdpa) attention; silently the library's default where the class lacks it."""
    attn = {} if "attn_implementation" in spec.config_kwargs else {"attn_implementation": "sdpa"}
    try:
        return auto.from_config(config, **attn)
    except (ValueError, ImportError) as err:
        if attn and ("sdpa" in str(err) or "scaled_dot_product_attention" in str(err)):
            return _from_config_plain(auto, config, spec)
        raise _rejected(spec, config, err) from None
    except Exception as err:  # noqa: BLE001 - e.g. a config this auto class has no model for
        raise _rejected(spec, config, err) from None


def _from_config_plain(auto, config, spec: TransformersSpec) -> nn.Module:
    try:
        return auto.from_config(config)
    except Exception as err:  # noqa: BLE001
        raise _rejected(spec, config, err) from None


def _rejected(spec: TransformersSpec, config, err: Exception) -> InputError:
    msg = " ".join(str(err).split())
    msg = msg if len(msg) <= 200 else msg[:197] + "..."
    return InputError("model.transformers.task", spec.task,
                      f"{spec.auto_class} cannot build {type(config).__name__} ({type(err).__name__}: {msg}); pick a task this model has")


def _task_io(spec: TransformersSpec, config):
    """Per-sample inputs, target and loss of the task."""
    from autopar.models import TensorSpec
    from autopar.models.attention import token_cross_entropy

    task = spec.task
    if task == "image_classification":
        size = _config_int(config, "image_size", spec)
        channels = int(getattr(config, "num_channels", 3))
        pixels = TensorSpec((channels, size, size), torch.float32)
        return (pixels,), TensorSpec((), torch.int64, high=int(config.num_labels)), F.cross_entropy
    vocab = _config_int(config, "vocab_size", spec)
    tokens = TensorSpec((spec.seq_len,), torch.int64, high=vocab)
    if task == "sequence_classification":
        return (tokens,), TensorSpec((), torch.int64, high=int(config.num_labels)), F.cross_entropy
    if task == "seq2seq_lm":
        decoder = TensorSpec((spec.target_len,), torch.int64, high=vocab)
        return (tokens, decoder), decoder, token_cross_entropy
    return (tokens,), tokens, token_cross_entropy


def _config_int(config, name: str, spec: TransformersSpec) -> int:
    value = getattr(config, name, None)
    if isinstance(value, (list, tuple)):  # some configs give (height, width)
        value = value[0]
    if not isinstance(value, int):
        raise InputError(f"model.transformers.{name}", value, f"{spec.config_name} has no integer {name}; set it, or pick another task")
    return value


# ----------------------------------------------------------- mixture of experts

_EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_TOP_K_KEYS = ("num_experts_per_tok", "moe_topk", "top_k")


def moe_shape(config) -> Optional[tuple[int, int]]:
    """(experts, experts each token is routed to) of a transformers MoE config; None if dense."""
    experts = next((getattr(config, k) for k in _EXPERT_COUNT_KEYS if isinstance(getattr(config, k, None), int)), None)
    top_k = next((getattr(config, k) for k in _TOP_K_KEYS if isinstance(getattr(config, k, None), int)), None)
    if not experts or not top_k or experts <= 1:
        return None
    return experts, top_k


def active_params(model: nn.Module, config) -> Optional[int]:
    """Parameters one token uses: the routed experts count top_k / experts of theirs
    (shared experts, attention, embeddings count in full). None for a dense model.
    Routed expert weights are those under an `experts` module (transformers' naming)."""
    shape = moe_shape(config)
    if shape is None:
        return None
    experts, top_k = shape
    seen: set[int] = set()
    total = routed = 0
    for name, p in model.named_parameters(remove_duplicate=True):
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if ".experts." in f".{name}":
            routed += p.numel()
    return total - routed + (routed * top_k) // experts
