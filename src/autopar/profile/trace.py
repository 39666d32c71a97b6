"""Trace one layer, forward and backward, on the meta device.

A TorchDispatchMode sees every aten op: it counts FLOPs with torch's own flop
registry, records matrix-product shapes, sums the bytes non-matmul ops move, and
propagates a "tensor-parallel shard" mark from column-parallel modules to their
row-parallel partners. Saved-tensor hooks measure what autograd keeps for
backward. Nothing is allocated: all tensors are meta tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from autopar.profile.types import Gemm
from autopar.spec.enums import TPStyle

aten = torch.ops.aten
_MM = {aten.mm, aten.addmm}
_BMM = {aten.bmm, aten.baddbmm}
_CONV = {aten.convolution}
_SOFTMAX = {aten._softmax, aten._safe_softmax, aten._scaled_dot_product_flash_attention,
            aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_flash_attention_for_cpu}
_GATHER = {aten.embedding, aten.index_select, aten.gather}
_BERNOULLI = {aten.bernoulli, aten.bernoulli_}
_MASK_MARK = "_autopar_mask"  # dropout masks: CUDA keeps bool (1 byte), the meta kernel reports the input dtype
_TP_MARK = "_autopar_tp"  # attribute set on tensors that are split across tensor-parallel ranks
_SHARD_OUT = (TPStyle.COLWISE, TPStyle.VOCAB_HEAD)  # outputs stay sharded
_REDUCE_OUT = (TPStyle.ROWWISE, TPStyle.VOCAB_EMBEDDING)  # outputs all-reduced


def storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def tensors_in(obj: Any) -> list[torch.Tensor]:
    return [x for x in tree_flatten(obj)[0] if isinstance(x, torch.Tensor)]


def is_marked(t: torch.Tensor) -> bool:
    return getattr(t, _TP_MARK, False)


def set_mark(obj: Any, value: bool) -> None:
    for t in tensors_in(obj):
        if t.dtype.is_floating_point:
            setattr(t, _TP_MARK, value)


@dataclass
class TraceResult:
    forward_flops: float = 0.0
    backward_flops: float = 0.0
    forward_tp_flops: float = 0.0
    core_flops: float = 0.0
    memory_bound_bytes: float = 0.0
    memory_bound_tp_bytes: float = 0.0
    backward_memory_bound_bytes: float = 0.0
    forward_ops: int = 0
    backward_ops: int = 0
    gemms: list[Gemm] = field(default_factory=list)
    saved: dict[int, tuple[int, bool, tuple[int, ...]]] = field(default_factory=dict)  # storage -> (bytes, tp, module stack)
    core_modules: set[int] = field(default_factory=set)
    tp_fwd_allreduce_bytes: float = 0.0
    tp_fwd_allreduces: int = 0
    tp_bwd_inputs: dict[int, int] = field(default_factory=dict)  # storage -> bytes of column-parallel inputs


def _moved_bytes(packet, inputs: list[torch.Tensor], out: Any) -> float:
    """Bytes a memory-bound op reads and writes. A gather (embedding lookup) reads
    only the rows it returns, not the whole table."""
    written = sum(t.numel() * t.element_size() for t in tensors_in(out))
    if packet in _GATHER:
        return 2.0 * written
    return written + sum(t.numel() * t.element_size() for t in inputs)


class LayerTracer(TorchDispatchMode):
    """Dispatch mode + module hooks for one layer. `styles` maps module -> TPStyle."""

    def __init__(self, layer: nn.Module, styles: dict[nn.Module, TPStyle], batch: int):
        super().__init__()
        self.layer = layer
        self.styles = styles
        self.batch = batch
        self.modules = {id(m): m for m in layer.modules()}
        self.param_free = {id(m) for m in layer.modules() if not any(True for _ in m.parameters(recurse=True))}
        self.skip_storages = {storage_key(p) for p in layer.parameters()} | {storage_key(b) for b in layer.buffers()}
        self.stack: list[int] = []
        self.backward = False
        self.result = TraceResult()
        self.flops_by_stack: list[tuple[float, tuple[int, ...]]] = []  # forward ops inside submodules
        self.bytes_by_stack: list[tuple[float, tuple[int, ...]]] = []
        self.inputs_of: dict[int, dict[int, int]] = {}  # parameter-free module -> its input storages
        self.keepalive: list[torch.Tensor] = []

    # ---------------------------------------------------------------- hooks

    def pre_hook(self, module: nn.Module, args: Any) -> None:
        if id(module) not in self.modules or self.backward:
            return
        self.stack.append(id(module))
        if id(module) in self.param_free:
            self.keepalive.extend(tensors_in(args))  # storage keys are addresses: keep them from being reused
            self.inputs_of[id(module)] = {storage_key(t): t.untyped_storage().nbytes() for t in tensors_in(args)}
        style = self.styles.get(module)
        if style in _SHARD_OUT:
            for t in tensors_in(args):
                self.keepalive.append(t)
                if t.dtype.is_floating_point and not is_marked(t):
                    self.result.tp_bwd_inputs[storage_key(t)] = t.untyped_storage().nbytes()

    def post_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if id(module) not in self.modules or self.backward:
            return
        if self.stack and self.stack[-1] == id(module):
            self.stack.pop()
        style = self.styles.get(module)
        if style in _SHARD_OUT:
            set_mark(output, True)
        elif style in _REDUCE_OUT:
            set_mark(output, False)
            self.result.tp_fwd_allreduce_bytes += sum(t.numel() * t.element_size() for t in tensors_in(output))
            self.result.tp_fwd_allreduces += 1

    def pack_hook(self, t: torch.Tensor) -> torch.Tensor:
        key = storage_key(t)
        if key not in self.skip_storages and key not in self.result.saved:
            nbytes = t.untyped_storage().nbytes()
            if getattr(t, _MASK_MARK, False):  # dropout mask: 1 byte per element on GPUs
                nbytes //= t.element_size()
            self.result.saved[key] = (nbytes, is_marked(t), tuple(self.stack))
        return t

    def _in_style(self) -> bool:
        return any(self.styles.get(self.modules[m]) is not None for m in self.stack)

    # ------------------------------------------------------------ dispatch

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        flops = float(flop_registry[packet](*args, **kwargs, out_val=out)) if packet in flop_registry else 0.0
        if self.backward:
            self.result.backward_flops += flops
            if not func.is_view:
                self.result.backward_ops += 1
                if not flops:
                    self.result.backward_memory_bound_bytes += _moved_bytes(packet, tensors_in((args, kwargs)), out)
            return out
        inputs = tensors_in((args, kwargs))
        sharded = any(is_marked(t) for t in inputs) or self._in_style()
        if any(is_marked(t) for t in inputs):
            set_mark(out, True)
        if packet is aten.native_dropout:
            setattr(out[1], _MASK_MARK, True)
        elif packet in _BERNOULLI:  # eager dropout outside CUDA: mask = bernoulli noise in the input dtype
            setattr(out, _MASK_MARK, True)
        r = self.result
        r.forward_ops += 0 if func.is_view else 1
        r.forward_flops += flops
        if sharded:
            r.forward_tp_flops += flops
        if packet in _SOFTMAX:
            core = next((m for m in reversed(self.stack) if m in self.param_free), None)
            if core is not None:
                r.core_modules.add(core)
        if flops and self.stack:
            self.flops_by_stack.append((flops, tuple(self.stack)))
        if flops:
            gemm = self._gemm(packet, args, out, inputs)
            if gemm is not None:
                r.gemms.append(gemm)
        elif not func.is_view:
            moved = _moved_bytes(packet, inputs, out)
            r.memory_bound_bytes += moved
            if self.stack:
                self.bytes_by_stack.append((moved, tuple(self.stack)))
            if sharded:
                r.memory_bound_tp_bytes += moved
        return out

    def core_flops(self) -> float:
        cores = self.result.core_modules
        return sum(f for f, stack in self.flops_by_stack if any(m in cores for m in stack))

    def core_memory_bound_bytes(self) -> float:
        cores = self.result.core_modules
        return sum(b for b, stack in self.bytes_by_stack if any(m in cores for m in stack))

    def core_input_storages(self) -> dict[int, int]:
        """storage -> bytes of the tensors passed into attention cores."""
        out: dict[int, int] = {}
        for m in self.result.core_modules:
            out.update(self.inputs_of.get(m, {}))
        return out

    def _gemm(self, packet, args, out, inputs) -> Optional[Gemm]:
        B = self.batch
        split = self._split(packet, inputs)
        if packet in _MM:
            a, b = args[-2], args[-1]
            return Gemm(a.shape[0] / B, b.shape[1], a.shape[1], 1.0, True, split)
        if packet in _BMM:
            a, b = args[-2], args[-1]
            return Gemm(a.shape[1], b.shape[2], a.shape[2], a.shape[0] / B, False, split)
        if packet in _CONV:
            w = args[1]
            o = out
            rows = o.shape[0] * (o[0, 0].numel() if o.dim() > 2 else 1) / B
            return Gemm(rows, w.shape[0], w[0].numel(), 1.0, True, split)
        return None

    def _split(self, packet, inputs) -> str:
        style = next((self.styles.get(self.modules[m]) for m in reversed(self.stack) if self.styles.get(self.modules[m])), None)
        if style in _SHARD_OUT:
            return "n"
        if style in _REDUCE_OUT:
            return "k"
        if any(is_marked(t) for t in inputs):
            return "count" if packet in _BMM else "n"
        return ""
