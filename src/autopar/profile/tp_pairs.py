"""Find Megatron-style Linear pairs in any layer, for tensor parallelism.

A pair is a Linear whose input is replicated (split by output columns) feeding,
through elementwise ops only, a Linear that consumes only that split result
(split by input rows): y = W2 f(W1 x). Splitting W1 by columns and W2 by rows
keeps f local and needs one all-reduce of y (Shoeybi et al. 2019, Sec. 3).
A split tensor reaching any other kind of op (a reshape, a reduction, the layer
output, a mix with a replicated tensor) disqualifies the column Linear.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from autopar.profile.trace import tensors_in
from autopar.spec.enums import TPStyle

_MARK = "_autopar_src"  # frozenset of ids of the column Linears a tensor derives from
_ELEMENTWISE_EXTRA = {torch.ops.aten.native_dropout, torch.ops.aten.dropout}


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
        out = func(*args, **(kwargs or {}))
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
    linears = {id(m): m for m in layer.modules() if isinstance(m, nn.Linear)}
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
