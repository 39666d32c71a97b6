"""Find Megatron-style Linear pairs in any layer, for tensor parallelism.

A pair is a Linear (or GPT-2's Conv1D) whose input is replicated (split by output columns) feeding,
through elementwise ops only, a Linear that consumes only that split result
(split by input rows): y = W2 f(W1 x). Splitting W1 by columns and W2 by rows
keeps f local and needs one all-reduce of y (Shoeybi et al. 2019, Sec. 3).
A split tensor reaching any other kind of op (a reshape, a reduction, the layer
output, a mix with a replicated tensor) disqualifies the column Linear.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from autopar.profile.linears import features
from autopar.profile.trace import meta_kernels, run_op, tensors_in
from autopar.spec.enums import TPStyle

_MARK = "_autopar_src"  # frozenset of ids of the column Linears a tensor derives from
_ELEMENTWISE_EXTRA = {torch.ops.aten.native_dropout, torch.ops.aten.dropout,
                      # dropout written out (T5): mask = empty_like(x).bernoulli_(1 - p); x * mask / (1 - p)
                      torch.ops.aten.empty_like, torch.ops.aten.bernoulli_, torch.ops.aten.bernoulli}


def _src(t: torch.Tensor) -> frozenset:
    return getattr(t, _MARK, frozenset())


class _PairFinder(TorchDispatchMode):
    def __init__(self, linears: dict[int, nn.Linear]):
        super().__init__()
        self.linears = linears
        self.active_linear = 0  # depth inside Linear modules (their internals are not checked)
        self.bad: set[int] = set()  # column Linears disqualified
        self.rows: dict[int, frozenset] = {}  # row Linear -> column Linears feeding it
        self.cols: set[int] = set()

    def pre(self, module: nn.Module, args: Any) -> None:
        if id(module) not in self.linears:
            return
        self.active_linear += 1
        x = args[0]
        if _src(x):
            if id(module) in self.rows and self.rows[id(module)] != _src(x):
                self.bad |= _src(x) | self.rows[id(module)]
            self.rows[id(module)] = _src(x)
        else:
            self.cols.add(id(module))

    def post(self, module: nn.Module, args: Any, output: Any) -> None:
        if id(module) not in self.linears:
            return
        self.active_linear -= 1
        if isinstance(output, torch.Tensor):
            setattr(output, _MARK, frozenset() if _src(args[0]) else frozenset({id(module)}))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = run_op(func, args, kwargs or {})
        if self.active_linear:
            return out
        inputs = [t for t in tensors_in((args, kwargs)) if t.dtype.is_floating_point]
        sources = [_src(t) for t in inputs]
        marked = frozenset().union(*sources) if sources else frozenset()
        if not marked:
            return out
        elementwise = torch.Tag.pointwise in func.tags or func._overloadpacket in _ELEMENTWISE_EXTRA
        # every non-scalar floating input must carry the split, else shards would meet full tensors
        mixed = any(not s and t.numel() > 1 for s, t in zip(sources, inputs))
        if not elementwise or mixed:
            self.bad |= marked
            return out
        for t in tensors_in(out):
            if t.dtype.is_floating_point:
                setattr(t, _MARK, marked)
        return out


def find_linear_pairs(layer: nn.Module, args: tuple, kwargs: dict) -> dict[nn.Module, TPStyle]:
    """Column/row styles for the Linear pairs of `layer` (run on meta inputs)."""
    linears = {id(m): m for m in layer.modules() if features(m) is not None}
    if len(linears) < 2:
        return {}
    finder = _PairFinder(linears)
    handles = [m.register_forward_pre_hook(finder.pre) for m in linears.values()]
    handles += [m.register_forward_hook(finder.post) for m in linears.values()]
    try:
        with torch.no_grad(), finder:
            out = layer(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    for t in tensors_in(out):  # a split tensor leaving the layer has no row partner here
        finder.bad |= _src(t)
    styles: dict[nn.Module, TPStyle] = {}
    for row, cols in finder.rows.items():
        if cols and not (cols & finder.bad):
            styles[linears[row]] = TPStyle.ROWWISE
            for c in cols:
                styles[linears[c]] = TPStyle.COLWISE
    return styles


# ------------------------------------------------------------------ attention


class _SDPACalls(TorchFunctionMode):
    """Appends None to `events` at each F.scaled_dot_product_attention and records its
    (q, k, v) shapes; Linear pre-hooks append the Linear: the call order of both."""

    def __init__(self, events: list):
        super().__init__()
        self.events = events
        self.shapes: list[tuple[tuple[int, ...], ...]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.events.append(None)
            self.shapes.append(tuple(tuple(t.shape) for t in args[:3]))
        return func(*args, **(kwargs or {}))


def _run_recording(layer: nn.Module, args: tuple, kwargs: dict, events: list) -> tuple[list, Any]:
    """Run `layer` on meta; fills `events` (Linears and None for attention, in call order);
    returns the attention calls' shapes and the output."""
    calls = _SDPACalls(events)
    handles = [m.register_forward_pre_hook(lambda m, a: events.append(m)) for m in layer.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad(), calls, meta_kernels():
            out = layer(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return calls.shapes, out


def find_attention_split(layer: nn.Module, args: tuple, kwargs: dict) -> tuple[dict[nn.Module, TPStyle], tuple[tuple[str, int], ...]]:
    """Megatron's attention split for any layer calling F.scaled_dot_product_attention:
    the Linears making q, k, v column-split, the one reading the attention output
    row-split, each rank keeping whole heads (Shoeybi et al. 2019, Sec. 3).

    Candidates, from one meta run: for each attention call with q (B, H, T, d) and k, v
    (B, Hkv, S, d), the Linears called before it (since the previous one) whose output
    features are a multiple of d dividing H*d (q, and k, v with as few as H/g heads under
    GQA), and the first Linear after it with H*d input features. They
    are accepted only if the layer, run again with those Linears cut to half their
    features (what tp=2 leaves a rank), calls attention with H/2 and Hkv/2 heads of the
    same head size d and returns the same shapes: then each rank's code computes its own
    heads, whatever views and rotations lie between. A fused q/k/v projection (GPT-2's
    Conv1D c_attn) or a view by a fixed head count fails this and is left whole.
    Returns the styles and the head counts tp must divide."""
    order: list = []
    shapes, out = _run_recording(layer, args, kwargs, order)
    if not shapes:
        return {}, ()
    styles: dict[nn.Module, TPStyle] = {}
    units: dict[str, int] = {}
    start = 0
    for call, (q, k, _) in enumerate(shapes):
        at = [i for i, m in enumerate(order) if m is None][call]
        H, Hkv, d = q[1], k[1], q[-1]  # Hkv = H where the library repeats k, v heads before the call
        before = [m for m in order[start:at] if m is not None and m not in styles
                  and m.out_features % d == 0 and (H * d) % m.out_features == 0]
        after = next((m for m in order[at + 1:] if m is not None and m.in_features == H * d), None)
        start = at + 1
        if len(before) < 3 or after is None or H % 2 or Hkv % 2:
            continue
        if _halved_run_matches(layer, args, kwargs, before, after, out, [(H // 2, Hkv // 2, d)]):
            styles.update({m: TPStyle.COLWISE for m in before})
            styles[after] = TPStyle.ROWWISE
            units["attention heads"], units["kv heads"] = H, min(m.out_features for m in before) // d
    return styles, tuple(units.items())


def _halved_run_matches(layer, args, kwargs, cols: list[nn.Linear], row: nn.Linear, out, expected: list) -> bool:
    saved = [(m, m.weight, m.bias) for m in (*cols, row)]
    try:
        for m in cols:
            m.weight = nn.Parameter(torch.empty(m.out_features // 2, m.in_features, device="meta"), requires_grad=False)
            if m.bias is not None:
                m.bias = nn.Parameter(torch.empty(m.out_features // 2, device="meta"), requires_grad=False)
        row.weight = nn.Parameter(torch.empty(row.out_features, row.in_features // 2, device="meta"), requires_grad=False)
        try:
            shapes, half_out = _run_recording(layer, args, kwargs, [])
        except Exception:  # noqa: BLE001 - a shape error: the layer's code needs whole heads
            return False
    finally:
        for m, w, b in saved:
            m.weight, m.bias = w, b
    heads = [(q[1], k[1], q[-1]) for q, k, _ in shapes]
    same_out = [tuple(t.shape) for t in tensors_in(half_out)] == [tuple(t.shape) for t in tensors_in(out)]
    return same_out and all(h in heads for h in expected)
