"""Tensor parallelism (Megatron-LM, Shoeybi et al. 2019) with DTensor's `parallelize_module`.

The model's `tp_plan` maps fnmatch patterns to styles; each becomes a ParallelStyle:
  colwise          ColwiseParallel()                      output features split, output stays sharded
  rowwise          RowwiseParallel()                      input features split, output all-reduced
  vocab_embedding  RowwiseParallel(input Replicate)       vocabulary split, output all-reduced
  vocab_head       ColwiseParallel(output Shard(-1))      vocabulary split; logits stay a DTensor and
                                                          the loss runs under `loss_parallel()`
  packed_qkv       PackedColwise()                        a fused [q | k | v] projection (GPT-2's c_attn):
                                                          each third split, rank r holding [q_r | k_r | v_r]
transformers' Conv1D (GPT-2; weight (in, out)) gets the same styles with the weight's
dimensions swapped (ColwiseConv1D, RowwiseConv1D, PackedColwise).

Attributes a module's forward reads to cut or view its heads (GPT-2's split_size and
num_heads, T5's n_heads) are divided by tp on each rank (ModelDef.tp_local_attrs), so the
library's own forward computes the rank's heads unchanged.

Sequence parallel (Korthikanti et al. 2022) keeps the residual stream split along the
sequence (Shard(1)) between tensor-parallel regions, derived from the same plan:
  - every LayerNorm / RMSNorm runs on its sequence shard (SequenceParallel);
  - the parent of column-split Linears all-gathers its input once (PrepareModuleInput);
  - row-split Linears reduce-scatter their output (output_layouts=Shard(1));
  - the top-level `embed` output is cut to the rank's sequence shard (PrepareModuleOutput);
    the vocab head all-gathers its input.
Weights tied before (GPT's embedding and head) are tied again afterwards: both are
Shard(0) over the vocabulary, so one DTensor parameter serves both.
"""

from __future__ import annotations

from fnmatch import fnmatch
from functools import partial

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)
from torch.distributed.tensor.placement_types import _StridedShard

from autopar.models.init import retie_, tied_parameters
from autopar.profile.linears import is_conv1d
from autopar.runtime.parallelized import Parallelized
from autopar.spec.enums import TPStyle

_NORMS = (nn.LayerNorm, nn.RMSNorm)


def apply(par: Parallelized) -> None:
    """Split every chunk over the tp mesh dimension with the model's plan (declared, or the
    Linear pairs the profiler found: ModelDef.tp_plan is set from the profile's facts)."""
    s = par.strategy
    if s.tp == 1:
        return
    for chunk in par.chunks:
        par.loss_parallel |= apply_tensor_parallel(chunk.module, par.ctx.mesh["tp"], par.mdef.tp_plan or {}, s.sequence_parallel)
        localize_attrs_(chunk.module, par.mdef.tp_local_attrs, s.tp)
    extras = (", sequence_parallel" if s.sequence_parallel else "") + (", loss_parallel" if par.loss_parallel else "")
    if par.mdef.tp_local_attrs:
        extras += ", per-rank " + "/".join(sorted({a for _, attrs in par.mdef.tp_local_attrs for a in attrs}))
    par.applied.append(f"tensor_parallel(tp={s.tp}{extras})")


def apply_tensor_parallel(module: nn.Module, tp_mesh: DeviceMesh, tp_plan: dict[str, str], sequence_parallel: bool) -> bool:
    """Shard `module` in place over `tp_mesh`; returns whether the loss must run under loss_parallel()."""
    ties = tied_parameters(module)
    styles = resolve_plan(module, tp_plan)
    plan = {name: _style(style, sequence_parallel, module.get_submodule(name)) for name, style in styles.items()}
    if sequence_parallel:
        plan.update(_sequence_parallel_plan(module, styles))
    parallelize_module(module, tp_mesh, plan)
    retie_(module, ties)
    return TPStyle.VOCAB_HEAD in styles.values()


def localize_attrs_(module: nn.Module, local_attrs: tuple[tuple[str, tuple[str, ...]], ...], tp: int) -> None:
    """Divide each named int attribute of the matching submodules by tp (the rank's share)."""
    for pattern, attrs in local_attrs:
        for name, sub in module.named_modules():
            if not (name and fnmatch(name, pattern)):
                continue
            for attr in attrs:
                value = getattr(sub, attr)
                if value % tp:
                    raise ValueError(f"strategy.tp: {name}.{attr} = {value} is not divisible by tp = {tp}; use a tp that divides it")
                setattr(sub, attr, value // tp)


def resolve_plan(module: nn.Module, tp_plan: dict[str, str]) -> dict[str, TPStyle]:
    """Module name -> style, for every submodule a pattern matches (the first matching pattern wins)."""
    out = {}
    for name, _ in module.named_modules():
        style = next((s for pattern, s in tp_plan.items() if name and fnmatch(name, pattern)), None)
        if style is not None:
            out[name] = TPStyle(style)
    return out


def _style(style: TPStyle, sp: bool, module: nn.Module) -> ParallelStyle:
    seq = Shard(1) if sp else Replicate()
    if style is TPStyle.PACKED_QKV:
        return PackedColwise()
    if is_conv1d(module) and style in (TPStyle.COLWISE, TPStyle.ROWWISE):
        return ColwiseConv1D() if style is TPStyle.COLWISE else RowwiseConv1D(output_layouts=seq)
    if style is TPStyle.COLWISE:
        return ColwiseParallel()
    if style is TPStyle.ROWWISE:
        return RowwiseParallel(output_layouts=seq)
    if style is TPStyle.VOCAB_EMBEDDING:
        return RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate())
    return ColwiseParallel(input_layouts=seq, output_layouts=Shard(-1), use_local_output=False)


class ColwiseConv1D(ColwiseParallel):
    """ColwiseParallel for transformers' Conv1D (y = x W + b, W (in, out)): W Shard(1), b Shard(0)."""

    def _partition_conv1d_fn(self, name, module, device_mesh):
        for pname, p in module.named_parameters():
            placement = Shard(1) if pname == "weight" else Shard(0)
            module.register_parameter(pname, nn.Parameter(distribute_tensor(p, device_mesh, [placement]), requires_grad=p.requires_grad))

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        return distribute_module(module, device_mesh, self._partition_conv1d_fn,
                                 partial(self._prepare_input_fn, self.input_layouts, self.desired_input_layouts),
                                 partial(self._prepare_output_fn, self.output_layouts, self.use_local_output))


class PackedColwise(ColwiseParallel):
    """ColwiseParallel for a fused projection whose output features are 3 equal parts
    [q | k | v] (Linear: weight (3P, in); Conv1D: weight (in, 3P); bias (3P,)).
    `_StridedShard(dim, split_factor=3)` gives rank r [q_r | k_r | v_r] (each part cut in tp
    pieces), so the forward's split(P / tp) yields its heads of each; the full tensor (and a
    DCP checkpoint) keeps the library's layout. The output is the rank's local features."""

    def _partition_packed_fn(self, name, module, device_mesh):
        tp = device_mesh.size()
        for pname, p in module.named_parameters():
            dim = 1 if pname == "weight" and is_conv1d(module) else 0
            if p.shape[dim] % (3 * tp):
                raise ValueError(f"strategy.tp: {name or 'module'}.{pname} has {p.shape[dim]} packed features, "
                                 f"not 3 parts divisible by tp = {tp}; use a tp that divides the heads")
            placement = _StridedShard(dim, split_factor=3)
            module.register_parameter(pname, nn.Parameter(distribute_tensor(p, device_mesh, [placement]), requires_grad=p.requires_grad))

    @staticmethod
    def _local_output_fn(mod, outputs, device_mesh):
        return outputs.to_local() if isinstance(outputs, DTensor) else outputs

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        return distribute_module(module, device_mesh, self._partition_packed_fn,
                                 partial(self._prepare_input_fn, self.input_layouts, self.desired_input_layouts),
                                 self._local_output_fn)


class RowwiseConv1D(RowwiseParallel):
    """RowwiseParallel for transformers' Conv1D: W Shard(0) (input rows), b replicated."""

    def _partition_conv1d_fn(self, name, module, device_mesh):
        for pname, p in module.named_parameters():
            placement = Shard(0) if pname == "weight" else Replicate()
            module.register_parameter(pname, nn.Parameter(distribute_tensor(p, device_mesh, [placement]), requires_grad=p.requires_grad))

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        self.desired_input_layouts = (Shard(-1),)
        return distribute_module(module, device_mesh, self._partition_conv1d_fn,
                                 partial(self._prepare_input_fn, self.input_layouts, self.desired_input_layouts),
                                 partial(self._prepare_output_fn, self.output_layouts, self.use_local_output))


def _sequence_parallel_plan(module: nn.Module, styles: dict[str, TPStyle]) -> dict[str, ParallelStyle]:
    plan: dict[str, ParallelStyle] = {}
    for name, sub in module.named_modules():
        if isinstance(sub, _NORMS):
            plan[name] = SequenceParallel()
    for name, style in styles.items():
        parent = name.rpartition(".")[0]
        if style in (TPStyle.COLWISE, TPStyle.PACKED_QKV) and parent:
            plan[parent] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
    if isinstance(getattr(module, "embed", None), nn.Module):
        plan["embed"] = PrepareModuleOutput(output_layouts=Replicate(), desired_output_layouts=Shard(1))
    return plan
