"""Trace one layer, forward and backward, on the meta device.

A TorchDispatchMode sees every aten op: it counts FLOPs with torch's own flop
registry (plus grouped GEMMs, which it lacks), records matrix-product shapes, sums
the bytes non-matmul ops move, and propagates a "tensor-parallel shard" mark from
column-parallel modules to their row-parallel partners. Saved-tensor hooks measure
what autograd keeps for backward. Nothing is allocated: all tensors are meta tensors.

On meta, scaled_dot_product_attention would decompose into the unfused math path
(T x T scores saved per head); the tracer routes it to the fused kernel a GPU runs
instead (flash without a mask, memory-efficient with one), so FLOPs and saved bytes
are those of the fused kernel. A failure inside the traced model becomes one
InputError line naming the module and the operator.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes, _get_current_dispatch_mode_stack
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count, shape_wrapper

from autopar.errors import InputError
from autopar.models.moe import expert_modules
from autopar.profile.types import Gemm
from autopar.spec.enums import TPStyle

aten = torch.ops.aten
_MM = {aten.mm, aten.addmm}
_BMM = {aten.bmm, aten.baddbmm}
_CONV = {aten.convolution}
_SOFTMAX = {aten._softmax, aten._safe_softmax, aten._scaled_dot_product_flash_attention,
            aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_flash_attention_for_cpu}
_GROUPED = {aten._grouped_mm}  # MoE experts: one GEMM per group of rows (torch._grouped_mm, F.grouped_mm)
_GATHER = {aten.embedding, aten.index_select, aten.gather}
_BERNOULLI = {aten.bernoulli, aten.bernoulli_}
_MASK_MARK = "_autopar_mask"  # dropout masks: CUDA keeps bool (1 byte), the meta kernel reports the input dtype
_TP_MARK = "_autopar_tp"  # attribute set on tensors that are split across tensor-parallel ranks
_SHARD_OUT = (TPStyle.COLWISE, TPStyle.PACKED_QKV, TPStyle.VOCAB_HEAD)  # outputs stay sharded
_REDUCE_OUT = (TPStyle.ROWWISE, TPStyle.VOCAB_EMBEDDING)  # outputs all-reduced


# ------------------------------------------------- FLOPs torch's registry lacks


def grouped_mm_flop(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """2 M N K summed over the groups of a grouped GEMM. (M, K) x (G, K, N) -> (M, N),
    rows split by offsets; (G, M, K) x (K, N) -> (M, N); (G, M, K) x (G, K, N) -> (G, M, N):
    each output element is a K-long dot product. (M, K) x (K, N) -> (G, M, N) splits K
    into groups (the weight gradient): 2 M N K in all."""
    if len(a_shape) == 2 and len(b_shape) == 2:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]
    return 2 * math.prod(out_shape) * a_shape[-1]


def grouped_mm_fallback_backward_flop(a_shape, b_shape, offs_shape, grad_shape, *args, out_shape=None, **kwargs) -> int:
    """transformers' grouped-GEMM fallback, backward: grad input and grad weight, 2 M N K each."""
    return 4 * a_shape[0] * a_shape[1] * grad_shape[-1]


def cpu_flash_flop(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """The CPU flash-attention kernel: the same count torch gives the CUDA one."""
    return sdpa_flop_count(q_shape, k_shape, v_shape)


def cpu_flash_backward_flop(grad_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_shape, q_shape, k_shape, v_shape)


_EXTRA_FLOPS: dict[str, Callable[..., int]] = {  # qualified op name -> formula over shapes
    "aten::_grouped_mm": grouped_mm_flop,
    "transformers::grouped_mm_fallback": grouped_mm_flop,
    "transformers::grouped_mm_fallback_backward": grouped_mm_fallback_backward_flop,
    "aten::_scaled_dot_product_flash_attention_for_cpu": cpu_flash_flop,
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward": cpu_flash_backward_flop,
}


def extra_flop_formulas() -> dict[Any, Callable[..., int]]:
    """Op packet -> formula over shapes, for the ops above that are registered in this
    process; pass as FlopCounterMode(custom_mapping=...) to count what the tracer counts."""
    out = {}
    for name, formula in _EXTRA_FLOPS.items():
        namespace, op = name.split("::")
        if hasattr(getattr(torch.ops, namespace), op):
            out[getattr(getattr(torch.ops, namespace), op)] = formula
    return out


_WRAPPED_EXTRA = {name: shape_wrapper(f) for name, f in _EXTRA_FLOPS.items()}


def op_flops(packet, args, kwargs, out) -> float:
    formula = flop_registry.get(packet) or _WRAPPED_EXTRA.get(packet._qualified_op_name)
    return float(formula(*args, **kwargs, out_val=out)) if formula is not None else 0.0


# -------------------------------------------- kernels the meta device gets wrong


def _grouped_mm_shape(a, b, offs=None, bias=None, out_dtype=None) -> torch.Tensor:
    """The output of torch._grouped_mm, shapes only. Its meta kernel enforces one CUDA
    build's limits (bf16 only, 16-byte strides), so fp32 or tiny-width MoE profiles
    would fail although the model is fine."""
    if a.dim() == 2:
        shape = (offs.shape[0], a.shape[0], b.shape[1]) if b.dim() == 2 else (a.shape[0], b.shape[-1])
    else:
        shape = (a.shape[1], b.shape[1]) if b.dim() == 2 else (a.shape[0], a.shape[1], b.shape[-1])
    return torch.empty(shape, dtype=out_dtype or a.dtype, device=a.device)


_META_SHAPES = {aten._grouped_mm: _grouped_mm_shape}


def run_op(func, args, kwargs) -> Any:
    """Run an aten op; on meta, ops in _META_SHAPES get shape-only outputs."""
    shape_fn = _META_SHAPES.get(func._overloadpacket)
    if shape_fn is not None and any(t.is_meta for t in tensors_in(args)):
        return shape_fn(*args, **kwargs)
    return func(*args, **kwargs)


class MetaKernels(TorchDispatchMode):
    """Outside a LayerTracer (the capture pass): shape-only stand-ins for _META_SHAPES."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return run_op(func, args, kwargs or {})


def meta_kernels() -> contextlib.AbstractContextManager:
    """MetaKernels, unless a LayerTracer below already handles those ops (and counts them)."""
    if any(isinstance(m, LayerTracer) for m in _get_current_dispatch_mode_stack()):
        return contextlib.nullcontext()
    return MetaKernels()


def fused_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """F.scaled_dot_product_attention on meta as the fused kernel a GPU would run; None
    where it does not apply (not meta, not 4-D). q (B, H, T, d); k, v (B, Hkv, S, d)."""
    if not (query.is_meta and query.dim() == 4 and key.dim() == 4):
        return None
    if attn_mask is None:  # flash: saves q, k, v, out and the (B, H, T) log-sum-exp; handles Hkv < H
        return aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal, False, scale=scale)[0]
    if attn_mask.dtype == torch.bool:  # as CUDA does: a boolean mask becomes an additive one
        attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device).masked_fill(attn_mask.logical_not(), float("-inf"))
    if key.shape[1] != query.shape[1]:  # the memory-efficient kernel wants every head
        rep = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    B, H, T, S = query.shape[0], query.shape[1], query.shape[2], key.shape[2]
    bias = attn_mask.expand(B, H, T, S)  # (B, H, T, S) view; saved for backward as its storage
    return aten._scaled_dot_product_efficient_attention(query, key, value, bias, True, dropout_p, is_causal, scale=scale)[0]


class FusedAttention(TorchFunctionMode):
    """Routes F.scaled_dot_product_attention on meta through fused_attention."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            out = fused_attention(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


# ------------------------------------------------------- errors inside the model

_VALUE_DEPENDENT = ("meta tensor", "data-dependent", "data dependent", "nonzero", "item()")


def profiling_failure(where: str, err: BaseException) -> InputError:
    """One line for a failure inside the user's model while it is profiled on meta."""
    msg = " ".join(str(err).split()) or type(err).__name__
    msg = msg if len(msg) <= 160 else msg[:157] + "..."
    if any(k in msg for k in _VALUE_DEPENDENT):
        fix = ("a step that reads tensor values (.item(), .tolist(), nonzero, boolean-mask indexing, `if tensor:`) cannot run "
               "on the meta device: make it depend on shapes only (for MoE routing, grouped GEMMs)")
    else:
        fix = "make one forward and backward of a batch of the declared input shapes run on the meta device"
    return InputError("model", where, f"failed while profiling ({type(err).__name__}: {msg}); {fix}")


def _innermost_module(root: nn.Module, tb) -> str:
    """Path of the deepest module of `root` whose forward is on the traceback."""
    names = {id(m): n for n, m in root.named_modules()}
    found = type(root).__name__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names:
            found = f"{type(owner).__name__} {names[id(owner)] or '<root>'!r}"
        tb = tb.tb_next
    return found


@contextlib.contextmanager
def model_errors(root: nn.Module) -> Iterator[None]:
    """Turn a failure inside `root`'s forward on meta into an InputError naming the module."""
    try:
        yield
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure in the user's model is reported in one line
        raise profiling_failure(_innermost_module(root, err.__traceback__), err) from None


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


def _non_leaf(args: tuple) -> Optional[tuple]:
    """The traced layer's inputs are leaves that require grad; an in-place first op
    (ReLU(inplace=True) as a layer of its own) is illegal on those, though fine in the
    model, where the input comes out of the previous layer. Hand the layer clones
    (made outside the tracer: nothing counted; CloneBackward passes gradients through)."""
    if not any(t.is_leaf and t.requires_grad for t in tensors_in(args)):
        return None
    with _disable_current_modes():
        def conv(x):
            if not (isinstance(x, torch.Tensor) and x.is_leaf and x.requires_grad):
                return x
            y = x.clone()
            if is_marked(x):
                setattr(y, _TP_MARK, True)
            return y
        return tuple(tree_map(conv, a) for a in args)


class LayerTracer(TorchDispatchMode):
    """Dispatch mode + module hooks for one layer. `styles` maps module -> TPStyle."""

    def __init__(self, layer: nn.Module, styles: dict[nn.Module, TPStyle], batch: int):
        super().__init__()
        self.layer = layer
        self.styles = styles
        self.batch = batch
        self.modules = {id(m): m for m in layer.modules()}
        self.names = {id(m): n for n, m in layer.named_modules()}
        self.param_free = {id(m) for m in layer.modules() if not any(True for _ in m.parameters(recurse=True))}
        self.experts = {id(m) for _, m in expert_modules(layer)}
        self.skip_storages = {storage_key(p) for p in layer.parameters()} | {storage_key(b) for b in layer.buffers()}
        self.stack: list[int] = []
        self.backward = False
        self.result = TraceResult()
        self.flops_by_stack: list[tuple[float, tuple[int, ...]]] = []  # forward ops inside submodules
        self.bytes_by_stack: list[tuple[float, tuple[int, ...]]] = []
        self.inputs_of: dict[int, dict[int, int]] = {}  # parameter-free module -> its input storages
        self.keepalive: list[torch.Tensor] = []
        self.fused = FusedAttention()

    def __enter__(self):
        self.fused.__enter__()
        return super().__enter__()

    def __exit__(self, exc_type, exc, tb):
        try:
            super().__exit__(exc_type, exc, tb)
        finally:
            self.fused.__exit__(exc_type, exc, tb)
        if exc is not None and isinstance(exc, Exception) and not isinstance(exc, InputError):
            raise profiling_failure(self._where(), exc) from None
        return False

    def _where(self, op: Any = None) -> str:
        inner = next((self.names[m] for m in reversed(self.stack) if self.names.get(m)), "")
        path = f"{type(self.layer).__name__}.{inner}" if inner else type(self.layer).__name__
        return f"{path} ({op})" if op is not None else path

    # ---------------------------------------------------------------- hooks

    def pre_hook(self, module: nn.Module, args: Any) -> Optional[tuple]:
        if id(module) not in self.modules or self.backward:
            return None
        replaced = _non_leaf(args) if module is self.layer else None
        args = replaced if replaced is not None else args
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
        return replaced

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
        try:
            out = run_op(func, args, kwargs)
        except Exception as err:  # noqa: BLE001 - the user's model failed: name the module and the op
            raise profiling_failure(self._where(func._overloadpacket), err) from None
        packet = func._overloadpacket
        flops = op_flops(packet, args, kwargs, out)
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
                r.gemms.append(replace(gemm, expert=True) if any(m in self.experts for m in self.stack) else gemm)
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
        if packet in _GROUPED:  # 2 M N K over all groups, as one GEMM of the summed rows
            a, b = args[0], args[1]
            n = b.shape[-1]
            k = a.shape[-1]
            return Gemm(math.prod(out.shape) / n / B, n, k, 1.0, True, split)
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
