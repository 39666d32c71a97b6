"""Build the recipe's model as a real nn.Module, with its inputs, target and loss.

`build_model(spec)` returns a ModelDef for any model kind: a built-in family, a user
factory ("package.module:factory"), or a transformers config. Building on the meta
device allocates no weight memory, which is how the profiler handles 1T models.

The built-in families are always built on meta; on a real device they are then
materialised by models/init.py, whose values are a pure function of (seed, parameter
name, shape): the runtime can instead parallelize the meta model first and draw only
each rank's shards, and get the same numbers. A user module or transformers model
runs its own initialisation, on the device, after torch.manual_seed(seed).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from autopar.errors import InputError
from autopar.models.init import InitScheme, materialize_
from autopar.spec.recipe import (
    CNNSpec,
    GPTSpec,
    LlamaSpec,
    MLPSpec,
    ModelSpec,
    ModuleSpec,
    TransformersSpec,
    WideLinearSpec,
)

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}


@dataclass(frozen=True)
class TensorSpec:
    """One per-sample tensor: shape without the batch dimension."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    high: int = 2  # integer tensors take values in [0, high)

    @property
    def is_float(self) -> bool:
        return self.dtype.is_floating_point

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * (torch.finfo(self.dtype).bits if self.is_float else torch.iinfo(self.dtype).bits if self.dtype != torch.bool else 8) // 8


LossFn = Callable[[Any, Optional[torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class ModelDef:
    module: nn.Module
    inputs: tuple[TensorSpec, ...]
    target: Optional[TensorSpec]
    loss: LossFn
    name: str
    tp_plan: Optional[dict[str, str]] = None  # fnmatch pattern -> TPStyle value
    feature_layer: Optional[str] = None  # Linear split by data_partition=features
    tp_units: tuple[int, ...] = ()  # the tensor-parallel degree must divide each (heads, kv heads, widths)
    init: Optional[InitScheme] = None  # built-ins: drawn per parameter by models/init.py; None: the module's own
    head_units: tuple[tuple[str, int], ...] = ()  # (what, heads) a tensor-parallel degree must divide
    active_params: Optional[int] = None  # mixture of experts: parameters one token uses (models/hf.active_params)
    moe: Optional[tuple[int, int]] = None  # (experts, top k) of a transformers MoE (the built-ins' are found on the module)
    tp_local_attrs: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (module pattern, int attributes each tp rank holds // tp)


_BUILTIN = (GPTSpec, LlamaSpec, MLPSpec, CNNSpec, WideLinearSpec)


def is_builtin(spec: ModelSpec) -> bool:
    """A built-in family: initialised by models/init.py, so it can be parallelized on meta first."""
    return isinstance(spec, _BUILTIN)


def build_model(spec: ModelSpec, device: str | torch.device = "meta", dtype: torch.dtype = torch.float32, seed: int = 0) -> ModelDef:
    """Construct the model on `device` with floating parameters in `dtype` (on meta: no
    weights drawn). torch.manual_seed(seed) is set either way on a real device (dropout)."""
    real = str(device) != "meta"
    if real:
        torch.manual_seed(seed)
    deferred = is_builtin(spec)
    with torch.device("meta" if deferred else device):
        mdef = _build(spec)
    mdef.module.to(dtype=dtype)
    if real and deferred:
        materialize_(mdef.module, mdef.init, seed, device)
    return mdef


def _build(spec: ModelSpec) -> ModelDef:
    from autopar.models.attention import token_cross_entropy

    if isinstance(spec, (GPTSpec, LlamaSpec)):
        from autopar.models.gpt import GPT
        from autopar.models.llama import Llama

        module = GPT(spec) if isinstance(spec, GPTSpec) else Llama(spec)
        tokens = TensorSpec((spec.seq_len,), torch.int64, high=spec.vocab)
        units = (spec.heads, spec.ffn) if isinstance(spec, GPTSpec) else (spec.heads, spec.n_kv_heads, spec.ffn)
        return ModelDef(module, (tokens,), tokens, token_cross_entropy, spec.family, tp_plan=module.tp_plan(), tp_units=units, init=module.init_scheme)
    if isinstance(spec, MLPSpec):
        from autopar.models.mlp import MLP

        module = MLP(spec)
        x = TensorSpec((spec.input_dim,), torch.float32)
        n_pairs = (len(spec.widths) + 1) // 2
        units = tuple(spec.widths[2 * i] for i in range(n_pairs))  # widths of the column-split Linears
        return ModelDef(module, (x,), _classes(spec.classes), F.cross_entropy, "mlp", tp_plan=module.tp_plan(), feature_layer="layers.0.fc", tp_units=units, init=module.init_scheme)
    if isinstance(spec, CNNSpec):
        from autopar.models.cnn import CNN

        x = TensorSpec((spec.channels, spec.image_size, spec.image_size), torch.float32)
        return ModelDef(CNN(spec), (x,), _classes(spec.classes), F.cross_entropy, "cnn", init=CNN.init_scheme)
    if isinstance(spec, WideLinearSpec):
        from autopar.models.wide_linear import WideLinear

        x = TensorSpec((spec.input_dim,), torch.float32)
        return ModelDef(WideLinear(spec), (x,), _classes(spec.classes), F.cross_entropy, "wide_linear", feature_layer=WideLinear.feature_layer(), init=WideLinear.init_scheme)
    if isinstance(spec, ModuleSpec):
        return _build_user(spec)
    if isinstance(spec, TransformersSpec):
        from autopar.models.hf import build_transformers

        return build_transformers(spec)
    raise TypeError(f"unknown model spec {type(spec).__name__}")


def _classes(n: int) -> TensorSpec:
    return TensorSpec((), torch.int64, high=n)


def import_object(path: str, field: str) -> Any:
    """Import "package.module:attr"; InputError on failure."""
    mod_name, _, attr = path.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as err:  # noqa: BLE001 - any import failure is the user's input
        raise InputError(field, path, f"cannot import module {mod_name!r} ({type(err).__name__}: {err}); check the path and PYTHONPATH") from None
    if not hasattr(mod, attr):
        raise InputError(field, path, f"module {mod_name!r} has no attribute {attr!r}")
    return getattr(mod, attr)


def _build_user(spec: ModuleSpec) -> ModelDef:
    factory = import_object(spec.module, "model.module")
    try:
        module = factory(**spec.kwargs)
    except Exception as err:  # noqa: BLE001 - the user's factory failed: report it in one line
        raise InputError("model.kwargs", spec.kwargs, f"factory {spec.module} raised {type(err).__name__}: {err}") from None
    if not isinstance(module, nn.Module):
        raise InputError("model.module", spec.module, f"factory returned {type(module).__name__}, expected an nn.Module")
    inputs = tuple(TensorSpec(tuple(i.shape), _DTYPES[i.dtype], i.high) for i in spec.input_specs)
    target = TensorSpec(tuple(spec.target.shape), _DTYPES[spec.target.dtype], spec.target.high) if spec.target else None
    plan = module.tp_plan() if callable(getattr(module, "tp_plan", None)) else None
    local = tuple(module.tp_local_attrs()) if plan and callable(getattr(module, "tp_local_attrs", None)) else ()
    units = _local_attr_units(module, local)
    name = spec.module.rsplit(":", 1)[-1]
    if spec.input_names is not None:
        module = KeywordInputs(module, spec.input_names)
        plan = {f"inner.{pattern}": style for pattern, style in plan.items()} if plan else None
        local = tuple((f"inner.{pattern}", attrs) for pattern, attrs in local)
    return ModelDef(module, inputs, target, user_loss, name, tp_plan=plan, head_units=units, tp_local_attrs=local)


def _local_attr_units(module: nn.Module, local_attrs) -> tuple[tuple[str, int], ...]:
    """(pattern.attr, value) of each per-rank attribute a user module declares
    (`tp_local_attrs()`: (fnmatch pattern, attribute names)): tp must divide each value."""
    units = {}
    for pattern, attrs in local_attrs:
        for sub_name, sub in module.named_modules():
            if sub_name and fnmatch(sub_name, pattern):
                for attr in attrs:
                    value = getattr(sub, attr, None)
                    if not isinstance(value, int) or isinstance(value, bool):
                        raise InputError("model.module", f"{sub_name}.{attr}", "tp_local_attrs() names an attribute that is not an int")
                    units.setdefault(f"{pattern}.{attr}", value)
    return tuple(units.items())


class KeywordInputs(nn.Module):
    """Adapter for a module whose forward takes named inputs: forward(*tensors) calls
    module(**{name: tensor}), or module({name: tensor}) when forward takes one argument
    that is not among the names. Parameter names gain the prefix "inner." (not "module.",
    which names DDP's wrapped module)."""

    def __init__(self, module: nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.inner = module
        self.names = names
        self.as_dict = _takes_dict(module, names)

    def forward(self, *tensors: torch.Tensor) -> Any:
        from autopar.profile.trace import meta_kernels, model_errors

        named = dict(zip(self.names, tensors))
        on_meta = any(t.is_meta for t in tensors)
        with model_errors(self) if on_meta else nullcontext(), meta_kernels() if on_meta else nullcontext():
            return self.inner(named) if self.as_dict else self.inner(**named)


def _takes_dict(module: nn.Module, names: tuple[str, ...]) -> bool:
    """True: forward(batch) takes the dict; False: forward(**named). InputError if neither fits."""
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # no signature to read (a C extension): pass keywords
        return False
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return False
    keywords = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if set(names) <= keywords:
        return False
    positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in params.values() if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if len(positional) >= 1 and len(required) <= 1 and not (set(names) & keywords):
        return True
    missing = sorted(set(names) - keywords)
    raise InputError("model.inputs", list(names), f"{type(module).__name__}.forward{inspect.signature(module.forward)} "
                     f"takes no argument {', '.join(missing)}; name the inputs after its parameters, or give one dict parameter")


def user_loss(output: Any, target: Optional[torch.Tensor]) -> torch.Tensor:
    """Loss of a user module. A dict / transformers ModelOutput output gives its `loss` if
    it has one, else its `logits` are the output. Then: cross-entropy for integer targets
    (over the last dim), MSE for float targets, the output itself if it is a scalar,
    else the mean square of the output."""
    from autopar.models.attention import at_least_fp32

    if isinstance(output, Mapping):
        if output.get("loss") is not None:
            return at_least_fp32(output["loss"])
        output = output["logits"] if output.get("logits") is not None else next(iter(output.values()))
    out = output[0] if isinstance(output, (tuple, list)) else output
    if target is None:
        return out if out.dim() == 0 else at_least_fp32(out).pow(2).mean()
    if target.dtype.is_floating_point:
        return F.mse_loss(at_least_fp32(out), at_least_fp32(target))
    return F.cross_entropy(at_least_fp32(out.flatten(0, -2)), target.flatten())


def synthetic_batch(mdef: ModelDef, batch: int, seed: int, device: str | torch.device = "cpu", float_dtype: torch.dtype = torch.float32):
    """A deterministic batch shaped by the model's specs: (inputs tuple, target or None).

    Inputs are random (per seed). Targets are a fixed function of the inputs, so the loss
    can fall: a token target is a fixed permutation of the input token; a class target is
    the argmax of a fixed random projection of the first input's leading features.
    Float targets of user modules are random.
    """
    gen = torch.Generator().manual_seed(seed)

    def make(ts: TensorSpec) -> torch.Tensor:
        shape = (batch, *ts.shape)
        if str(device) == "meta":  # shapes only: never materialise (a 1e9-feature sample is 4 GB)
            return torch.empty(shape, device="meta", dtype=float_dtype if ts.is_float else ts.dtype)
        if ts.is_float:
            return torch.randn(shape, generator=gen, dtype=torch.float32).to(device=device, dtype=float_dtype)
        return torch.randint(0, ts.high, shape, generator=gen, dtype=torch.int64).to(device=device, dtype=ts.dtype)

    inputs = tuple(make(ts) for ts in mdef.inputs)
    if mdef.target is None:
        return inputs, None
    if str(device) == "meta" or mdef.target.is_float:
        return inputs, make(mdef.target)
    return inputs, _learnable_target(_target_source(inputs, mdef.target), mdef.target).to(device)


def _target_source(inputs: tuple[torch.Tensor, ...], ts: TensorSpec) -> torch.Tensor:
    """The input a target is a function of: the last token input shaped like the target
    (a seq2seq model's decoder tokens), else the first input."""
    same = [x for x in inputs if not x.dtype.is_floating_point and tuple(x.shape[1:]) == ts.shape]
    return same[-1] if same else inputs[0]


_TARGET_SEED = 1234  # fixed: the target function must not change with the batch seed


def _learnable_target(x: torch.Tensor, ts: TensorSpec) -> torch.Tensor:
    if not x.dtype.is_floating_point and tuple(x.shape[1:]) == ts.shape:  # tokens -> permuted tokens
        perm = torch.randperm(ts.high, generator=torch.Generator().manual_seed(_TARGET_SEED))
        return perm[x.cpu().clamp(max=ts.high - 1)].to(ts.dtype)
    flat = x.detach().cpu().float().reshape(x.shape[0], -1)
    k = min(64, flat.shape[1])
    proj = torch.randn(k, ts.high, generator=torch.Generator().manual_seed(_TARGET_SEED))
    labels = (flat[:, :k] @ proj).argmax(dim=1)
    return labels.reshape((x.shape[0], *ts.shape)).to(ts.dtype)
