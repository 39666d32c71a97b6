"""Profile any nn.Module on the meta device: ordered placeable layers with their costs.

1. Build the model on meta in the compute dtype (no weight memory).
2. One forward pass under no_grad captures each placeable layer's inputs.
3. Each group of identical layers (same class, parameter shapes, input shapes) is
   traced once, standalone, forward and backward (profile.trace); the loss is
   traced with the last layer.
Per-sample figures are the traced figures divided by the profiling batch.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Optional

import torch
from torch import nn
from torch.utils._pytree import tree_map

from autopar.errors import InputError
from autopar.models import ModelDef, build_model, synthetic_batch
from autopar.models.llama import LlamaAttention
from autopar.models.moe import MoE, library_experts
from autopar.profile.facts import model_facts
from autopar.profile.linears import features
from autopar.profile.structure import CONTAINERS, block_indices, find_stacks, placeable_layers, split_of
from autopar.profile.tp_pairs import find_attention_split, find_linear_pairs
from autopar.profile.trace import LayerTracer, is_marked, set_mark, tensors_in
from autopar.profile.types import LayerProfile, LayerStats, ModelProfile, is_mlp_layer
from autopar.spec.enums import Precision, TPStyle
from autopar.spec.recipe import GPTSpec, LlamaSpec, ModelSpec, Recipe

PROFILE_BATCH = 2  # > 1 so batch-statistics layers work; results are divided by it


_PROFILES: dict[tuple[str, Precision], ModelProfile] = {}  # profiles are frozen: one per (model spec, precision)


def profile_recipe(recipe: Recipe) -> ModelProfile:
    """The recipe's model profiled in its precision; profiled once per process (the preflight,
    the prediction and a pipeline's layout read the same profile)."""
    key = (recipe.model.model_dump_json(), recipe.training.precision)
    if key not in _PROFILES:
        _PROFILES[key] = profile_model(recipe.model, recipe.training.precision)
    return _PROFILES[key]


def profile_model(spec: ModelSpec, precision: Precision = Precision.BF16, batch: int = PROFILE_BATCH) -> ModelProfile:
    dtype = torch.float32 if precision is Precision.FP32 else (torch.bfloat16 if precision is Precision.BF16 else torch.float16)
    mdef = build_model(spec, device="meta", dtype=dtype)
    return profile_module(mdef, dtype, batch, spec)


# ------------------------------------------------------------ layer discovery


def _structure(mod: nn.Module) -> tuple:
    return (type(mod).__qualname__, tuple((n, tuple(p.shape)) for n, p in mod.named_parameters()))


def stacks_of(mdef: ModelDef, spec: Optional[ModelSpec]) -> tuple[str, ...]:
    """The model's stacks of repeated blocks: named by the recipe, declared by the model, or found."""
    named = getattr(spec, "blocks", None)
    named = [named] if isinstance(named, str) else named or getattr(type(mdef.module), "block_stacks", None)
    try:
        return find_stacks(mdef.module, named)
    except LookupError as err:
        containers = [n for n, m in mdef.module.named_modules() if isinstance(m, CONTAINERS) and n][:8]
        raise InputError("model.blocks", str(err.args[0]), f"no container of blocks at that path; containers here: "
                                                             f"{', '.join(containers) or 'none'}") from None


# --------------------------------------------------------------- capture pass


def _capture(mdef: ModelDef, layers: list[tuple[str, nn.Module]], batch: int, dtype: torch.dtype):
    """Run the model once on meta; return per-layer (args, kwargs, output) in execution order."""
    calls: dict[str, tuple] = {}
    order: list[str] = []
    handles = []
    shortcut = _ShapeCache()
    for name, mod in layers:
        mod.forward = shortcut.wrap(mod)
        def pre(m, args, kwargs, name=name):
            if name not in calls:
                calls[name] = (args, kwargs, None)
                order.append(name)

        def post(m, args, kwargs, output, name=name):
            a, k, o = calls[name]
            if o is None:
                calls[name] = (a, k, output)

        handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(mod.register_forward_hook(post, with_kwargs=True))
    inputs, target = synthetic_batch(mdef, batch, seed=0, device="meta", float_dtype=dtype)
    try:  # with autograd on, as in training: a layer input carries a gradient only if parameters made it
        with torch.enable_grad():
            output = mdef.module(*inputs)
    finally:
        for h in handles:
            h.remove()
        for _, mod in layers:
            del mod.forward
    return calls, order, output, target


class _ShapeCache:
    """On meta, a layer's outputs depend only on its structure and input shapes: a
    repeated block (same structure, same input shapes) returns fresh meta tensors of
    the cached output shapes instead of running again. Makes capturing 128 layers of
    a 1T model as cheap as capturing one."""

    def __init__(self):
        self.outputs: dict[tuple, Any] = {}

    def wrap(self, mod: nn.Module):
        forward = mod.forward

        def cached_forward(*args, **kwargs):
            key = (_structure(mod), tuple((tuple(t.shape), t.dtype) for t in tensors_in((args, kwargs))), tuple(sorted(kwargs)))
            if key not in self.outputs:
                self.outputs[key] = forward(*args, **kwargs)
            return tree_map(_fresh, self.outputs[key])

        return cached_forward


def _fresh(t: Any) -> Any:
    """A new meta tensor like `t`; one carrying a gradient is made a non-leaf (in-place ops
    such as ReLU(inplace=True) on a layer's output are legal on those only)."""
    if not isinstance(t, torch.Tensor):
        return t
    return torch.empty_like(t).requires_grad_(True).clone() if t.requires_grad else torch.empty_like(t)


# -------------------------------------------------------------- styles, keys


def _styles_for(mdef: ModelDef, name: str, layer: nn.Module, args, kwargs, heads: dict[str, int]) -> dict[nn.Module, TPStyle]:
    """The declared plan's styles in `layer`, else the attention split and Linear pairs
    found (tp_pairs.py); head counts found go into `heads`."""
    if mdef.tp_plan is None:
        attention, units = find_attention_split(layer, args, kwargs)
        heads.update(units)
        return {**find_linear_pairs(layer, args, kwargs), **attention}
    styles = {}
    for sub_name, sub in layer.named_modules():
        full = f"{name}.{sub_name}" if sub_name else name
        for pattern, style in mdef.tp_plan.items():
            if fnmatch.fnmatchcase(full, pattern):
                styles[sub] = TPStyle(style)
    return styles


def _signature(layer: nn.Module, args, kwargs, styles, marked_in: bool, with_loss: bool) -> tuple:
    shapes = tuple((tuple(t.shape), str(t.dtype)) for t in tensors_in((args, kwargs)))
    names = {id(m): n for n, m in layer.named_modules()}
    style_key = tuple(sorted((names[id(m)], s.value) for m, s in styles.items()))
    return (_structure(layer), shapes, style_key, marked_in, with_loss, tuple(sorted(kwargs)))


# ------------------------------------------------------------------- tracing


def _prepare(args, kwargs, marked: bool):
    def conv(x):
        if isinstance(x, torch.Tensor) and x.dtype.is_floating_point:
            y = x.detach().requires_grad_(x.requires_grad)  # model inputs and masks take no gradient
            if marked:
                set_mark(y, True)
            return y
        return x

    return tree_map(conv, args), tree_map(conv, kwargs)


def trace_layer(layer, args, kwargs, styles, batch, loss_fn=None, target=None, marked_in=False) -> tuple[LayerStats, Any]:
    args, kwargs = _prepare(args, kwargs, marked_in)
    tracer = LayerTracer(layer, styles, batch)
    pre = nn.modules.module.register_module_forward_pre_hook(tracer.pre_hook)
    post = nn.modules.module.register_module_forward_hook(tracer.post_hook)
    try:
        with torch.autograd.graph.saved_tensors_hooks(tracer.pack_hook, lambda t: t), tracer:
            out = layer(*args, **kwargs)
            outs = [t for t in tensors_in(out) if t.dtype.is_floating_point]
            out_bytes = sum(t.numel() * t.element_size() for t in outs)
            out_marked = any(is_marked(t) for t in outs)
            roots = [loss_fn(out, target)] if loss_fn is not None else [t for t in outs if t.requires_grad]
    finally:
        pre.remove()
        post.remove()
    tracer.backward = True
    if roots:
        with tracer:
            torch.autograd.backward(roots, [torch.ones_like(r) for r in roots])
    stats = _stats(layer, tracer, styles, args, kwargs, out_bytes, out_marked, batch)
    return stats, out


def _stats(layer, tracer: LayerTracer, styles, args, kwargs, out_bytes, out_marked, batch) -> LayerStats:
    r = tracer.result
    B = float(batch)
    cores = r.core_modules
    saved_total = sum(b for b, _, _ in r.saved.values())
    saved_tp = sum(b for b, tp, _ in r.saved.values() if tp)
    core_internal = sum(b for key, (b, _, stack) in r.saved.items() if any(m in cores for m in stack))
    core_in = tracer.core_input_storages()
    # checkpointing the core keeps its inputs; those not saved anyway come back
    core_freed = core_internal - sum(b for key, b in core_in.items() if key not in r.saved or _saved_in_core(r, key, cores))
    inputs = [t for t in tensors_in((args, kwargs)) if t.dtype.is_floating_point]
    tp_params = sum(
        p.numel() for m, s in styles.items() for n, p in m.named_parameters(recurse=False) if not (s is TPStyle.ROWWISE and n == "bias")
    )
    bwd_tp_bytes = sum(r.tp_bwd_inputs.values())
    expert_params, expert_flops, dispatch = _expert_stats(layer, out_bytes / B)
    return LayerStats(
        kind=type(layer).__name__,
        forward_flops=r.forward_flops / B,
        backward_flops=r.backward_flops / B,
        forward_tp_flops=r.forward_tp_flops / B,
        core_flops=tracer.core_flops() / B,
        gemms=tuple(r.gemms),
        memory_bound_bytes=r.memory_bound_bytes / B,
        memory_bound_tp_bytes=r.memory_bound_tp_bytes / B,
        backward_memory_bound_bytes=r.backward_memory_bound_bytes / B,
        core_memory_bound_bytes=tracer.core_memory_bound_bytes() / B,
        forward_ops=r.forward_ops,
        backward_ops=r.backward_ops,
        params=sum(p.numel() for p in layer.parameters()),
        tp_params=tp_params,
        saved_bytes=saved_total / B,
        saved_tp_bytes=saved_tp / B,
        saved_core_bytes=max(0.0, core_freed) / B,
        input_bytes=sum(t.untyped_storage().nbytes() for t in inputs) / B,
        output_bytes=out_bytes / B,
        output_tp_sharded=out_marked,
        tp_fwd_allreduce_bytes=r.tp_fwd_allreduce_bytes / B,
        tp_fwd_allreduces=r.tp_fwd_allreduces,
        tp_bwd_allreduce_bytes=bwd_tp_bytes / B,
        tp_bwd_allreduces=len(r.tp_bwd_inputs),
        tp_styles=_style_names(layer, styles),
        tp_candidates=_candidates(layer, cores),
        has_core=bool(cores),
        expert_params=expert_params,
        expert_flops=expert_flops,
        dispatch_bytes=dispatch,
        kv_bytes=_kv_bytes(layer, sum(core_in.values()) / B),
    )


def _kv_bytes(layer: nn.Module, core_in_bytes: float) -> float:
    """Keys and values context parallelism gathers, per sample: q, k and v enter each core with
    one shape (2/3 of its inputs); Llama gathers its kv heads before repeating them (/ n_rep)."""
    grouped = next((m for m in layer.modules() if isinstance(m, LlamaAttention)), None)
    return 2.0 / 3.0 * core_in_bytes / (grouped.n_rep if grouped is not None else 1)


def _expert_stats(layer: nn.Module, out_bytes: float) -> tuple[int, float, float]:
    """(routed expert parameters, their forward FLOPs per sample, dispatched bytes per sample)
    of the MoE layers inside a block (models/moe.py's, or transformers' stacked experts):
    each of the block's tokens (its output, (T, h) per sample) is sent to top_k experts, and
    each (token, choice) row costs two FLOPs per parameter of one expert."""
    params, flops, sent = 0, 0.0, 0.0
    for m in layer.modules():
        if isinstance(m, MoE):
            experts, hidden, top_k = m.experts.local_experts, m.router.in_features, m.top_k
            weights = list(m.experts.parameters())
        elif library_experts(m):
            experts, hidden, top_k = m.num_experts, m.hidden_dim, _routed_top_k(layer)
            weights = list(m.parameters())
        else:
            continue
        n = sum(p.numel() for p in weights)
        rows = out_bytes / (hidden * weights[0].element_size()) * top_k  # (token, choice) rows per sample
        params += n
        flops += 2.0 * rows * n / experts
        sent += out_bytes * top_k
    return params, flops, sent


def _routed_top_k(layer: nn.Module) -> int:
    """Experts per token of a transformers MoE block: its (or its router's) integer top_k."""
    return next((m.top_k for m in layer.modules() if isinstance(getattr(m, "top_k", None), int)), 1)


def _saved_in_core(r, key, cores) -> bool:
    """A core input that autograd saved only inside the core is freed and re-kept: count it back."""
    return any(m in cores for m in r.saved[key][2])


def _style_names(layer, styles) -> tuple[tuple[str, str], ...]:
    names = {id(m): n for n, m in layer.named_modules()}
    return tuple(sorted((names[id(m)], s.value) for m, s in styles.items()))


def _candidates(layer: nn.Module, cores: set[int]) -> tuple[tuple[str, str], ...]:
    out = []
    for name, m in layer.named_modules():
        if isinstance(m, nn.Linear):
            out.append((name, "linear"))
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            out.append((name, "conv"))
        elif isinstance(m, nn.Embedding):
            out.append((name, "embedding"))
        elif id(m) in cores:
            out.append((name, "attention"))
    return tuple(out)


# ------------------------------------------------------------------- profile


def _profile_layers(mdef: ModelDef, layers, calls: dict, order: list[str], loss_on_last: bool, batch: int, target):
    """Each placeable layer in call order (then those that never ran), traced once per
    distinct signature: (profiles, TP styles found by module name, attention heads found, notes)."""
    by_name = dict(layers)
    module_names = {id(m): n for n, m in mdef.module.named_modules()}
    last = order[-1] if order else None
    seen: dict[tuple, tuple[int, LayerStats, bool]] = {}
    profiles: list[LayerProfile] = []
    seen_params: set[int] = set()
    detected: dict[str, str] = {}  # full module name -> TPStyle value: the Linear pairs found
    found_heads: dict[str, int] = {}  # attention heads of the attention split found
    marked = False
    notes: list[str] = []
    for name in order + [n for n, _ in layers if n not in calls]:
        layer = by_name[name]
        if name not in calls:
            notes.append(f"{name} never ran in forward: counted for parameters only")
            stats, marked_out = _idle_stats(layer), False
            group = -1 - len(profiles)
        else:
            args, kwargs, _ = calls[name]
            styles = _styles_for(mdef, name, layer, args, kwargs, found_heads)
            detected.update({module_names[id(m)]: style.value for m, style in styles.items()})
            with_loss = name == last and loss_on_last
            key = _signature(layer, args, kwargs, styles, marked, with_loss)
            if key not in seen:
                stats, _ = trace_layer(layer, args, kwargs, styles, batch, mdef.loss if with_loss else None, target, marked)
                seen[key] = (len(seen), stats, stats.output_tp_sharded)
            group, stats, marked_out = seen[key]
        shared = sum(p.numel() for p in layer.parameters() if id(p) in seen_params)
        seen_params |= {id(p) for p in layer.parameters()}
        profiles.append(LayerProfile(name=name, group=group, stats=stats, shared_params=shared))
        marked = marked_out
    return profiles, detected, found_heads, notes


def profile_module(mdef: ModelDef, dtype: torch.dtype, batch: int = PROFILE_BATCH, spec: Optional[ModelSpec] = None) -> ModelProfile:
    """`spec` gives the facts only a recipe knows (the sequence length); without it they are unknown."""
    root = mdef.module
    stacks = stacks_of(mdef, spec)
    layers = placeable_layers(root, stacks)
    calls, order, output, target = _capture(mdef, layers, batch, dtype)
    by_name = dict(layers)
    last = order[-1] if order else None
    loss_on_last = last is not None and calls[last][2] is output
    profiles, detected, found_heads, notes = _profile_layers(mdef, layers, calls, order, loss_on_last, batch, target)
    if not loss_on_last:
        notes.append("the model's output is not its last layer's output: the loss is not costed")
    names = [p.name for p in profiles]
    cuts = block_indices(names, stacks)
    blocks = tuple(names[i] for i in cuts)
    split = split_of(root, stacks, blocks, synthetic_batch(mdef, batch, seed=0, device="meta", float_dtype=dtype)[0]) if cuts else None
    plan = dict(mdef.tp_plan) if mdef.tp_plan is not None else detected
    facts = model_facts(root, mdef.name, plan, spec.seq_len if isinstance(spec, (GPTSpec, LlamaSpec)) else None,
                        _head_units(spec) or mdef.head_units or tuple(found_heads.items()), mdef.feature_layer, blocks,
                        any(is_mlp_layer(p.stats) for p in profiles), stacks, split, mdef.moe)
    if facts.batch_norms:
        notes.append(f"{facts.batch_norms} BatchNorm layers: with dp > 1 they become SyncBatchNorm on CUDA/XPU "
                     "(statistics over the replicas' micro-batch); on CPU (gloo has no SyncBatchNorm) each replica "
                     "normalises over its own micro-batch, as DDP does; micro-batching or a pipeline normalises "
                     "over each micro-batch")
    return ModelProfile(
        model=mdef.name,
        layers=tuple(profiles),
        dtype_bytes=torch.empty((), dtype=dtype, device="meta").element_size(),
        params=sum(p.numel() for p in root.parameters()),
        sample_bytes=float(sum(t.nbytes for t in mdef.inputs) + (mdef.target.nbytes if mdef.target else 0)),
        tp_units=mdef.tp_units or _detected_units(profiles, by_name),
        feature_dim=_feature_dim(root, mdef.feature_layer),
        profiled_batch=batch,
        notes=tuple(notes),
        cuts=cuts or None,
        active_params=mdef.active_params,
        facts=facts,
    )


def _head_units(spec: Optional[ModelSpec]) -> tuple[tuple[str, int], ...]:
    """Attention heads a tensor-parallel degree must divide (views reshape by them)."""
    if isinstance(spec, LlamaSpec):
        return (("heads", spec.heads), ("kv_heads", spec.n_kv_heads))
    if isinstance(spec, GPTSpec):
        return (("heads", spec.heads),)
    return ()


def _idle_stats(layer: nn.Module) -> LayerStats:
    return LayerStats(
        type(layer).__name__, 0.0, 0.0, 0.0, 0.0, (), 0.0, 0.0, 0.0, 0.0, 0, 0, sum(p.numel() for p in layer.parameters()), 0,
        0.0, 0.0, 0.0, 0.0, 0.0, False, 0.0, 0, 0.0, 0, (), (), False,
    )


def _detected_units(profiles: list[LayerProfile], by_name: dict[str, nn.Module]) -> tuple[int, ...]:
    units = set()
    for lp in profiles:
        layer = by_name[lp.name]
        for sub, style in lp.stats.tp_styles:
            m = layer.get_submodule(sub) if sub else layer
            if style == TPStyle.COLWISE.value and features(m) is not None:
                units.add(features(m)[1])
    return tuple(sorted(units))


def _feature_dim(root: nn.Module, path: Optional[str]) -> Optional[int]:
    if not path:
        return None
    m = root.get_submodule(path)
    return getattr(m, "in_features", None)
