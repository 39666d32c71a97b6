"""The structure of any nn.Module: its stacks of repeated blocks, the layers the profiler
traces, and how a pipeline can cut it without changing its forward.

Stacks. A stack is a container (ModuleList, Sequential, ModuleDict) of >= 2 blocks: children
that are structurally identical, or all of one parametrised class (ResNet stages, whose
first block downsamples). The stacks are the outermost ones, at any depth
(`transformer.h`, `model.layers`, `encoder.layer`, `decoder.block`, `layer1`..`layer4`),
or those the model declares (`block_stacks`, the built-in families' `layers`) or the recipe
names (`model: {blocks: "model.layers"}`).

Layers. The root's children, with containers and every module on the way to a stack
expanded, in execution order: embed, blocks..., head. A pipeline stage starts only at a
block; the layers between blocks ride with the block before them (the embedding with the
first).

Cutting. Two ways, decided here once and recorded in the model's facts:
  chain  the stack is a child of the root and the root's forward is exactly its children
         in order, each taking the previous one's output (checked on the torch.fx graph
         with those children as leaves): stages are hand-cut slices that keep every
         module as it is, so tensor parallelism, FSDP and recomputation apply inside;
  graph  anything else (skip connections across blocks, blocks deep inside, dict
         outputs): torch.distributed.pipelining's tracing front end splits the exported
         program at the blocks and sends every tensor that crosses a cut; checked here
         with torch.export. Modules become interpreted graphs: no tensor parallelism.
A model neither can cut gets no pipeline, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.fx as fx
from torch import nn

CONTAINERS = (nn.ModuleList, nn.Sequential, nn.ModuleDict)


class SplitKind:
    CHAIN = "chain"
    GRAPH = "graph"


@dataclass(frozen=True)
class Split:
    kind: str  # SplitKind value, or "" when the model cannot be cut
    problem: Optional[str] = None  # why it cannot (kind "")
    skip_span: int = 1  # graph: most blocks a gradient-carrying tensor skips forward (1: only to the next block)


def _signature(mod: nn.Module) -> tuple:
    return (type(mod).__qualname__, tuple((n, tuple(p.shape)) for n, p in mod.named_parameters()))


def is_stack(mod: nn.Module) -> bool:
    if not isinstance(mod, CONTAINERS) or len(mod) < 2:
        return False
    children = list(mod.children())
    if len({_signature(c) for c in children}) < len(children):
        return True
    return len({type(c) for c in children}) == 1 and any(True for _ in children[0].parameters())


def find_stacks(root: nn.Module, named: Optional[Sequence[str]] = None) -> tuple[str, ...]:
    """Paths of the outermost stacks (pre-order), or the named ones, checked to exist."""
    if named:
        for path in named:
            mod = _submodule(root, path)
            if mod is None or not isinstance(mod, CONTAINERS) or len(mod) == 0:
                raise LookupError(path)
        return tuple(named)
    found: list[str] = []
    for name, mod in root.named_modules():
        if name and not any(name.startswith(f"{s}.") for s in found) and is_stack(mod):
            found.append(name)
    return tuple(found)


def _submodule(root: nn.Module, path: str) -> Optional[nn.Module]:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def stack_blocks(root: nn.Module, stacks: Optional[Sequence[str]] = None) -> tuple[str, ...]:
    """Module names of the blocks of `stacks` (default: those found), in order."""
    return tuple(f"{s}.{name}" for s in (find_stacks(root) if stacks is None else stacks)
                 for name, _ in root.get_submodule(s).named_children())


def placeable_layers(root: nn.Module, stacks: Sequence[str]) -> list[tuple[str, nn.Module]]:
    """The layers the profiler traces: the root's children, with containers and the modules
    that hold a stack expanded (e.g. embed, layers.0..L-1, head)."""
    out: list[tuple[str, nn.Module]] = []

    def holds(prefix: str) -> bool:
        return any(s == prefix or s.startswith(f"{prefix}.") for s in stacks)

    def visit(prefix: str, mod: nn.Module) -> None:
        for name, child in mod.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(child, CONTAINERS) or holds(path):
                visit(path, child)
            else:
                out.append((path, child))

    visit("", root)
    return out or [("", root)]


def block_indices(names: Sequence[str], stacks: Sequence[str]) -> tuple[int, ...]:
    """Indices of the layers (in profiled order) that are blocks of a stack."""
    return tuple(i for i, n in enumerate(names) if n.rpartition(".")[0] in stacks)


# ------------------------------------------------------------------ how to cut


def split_of(root: nn.Module, stacks: Sequence[str], blocks: Sequence[str], inputs: tuple[torch.Tensor, ...]) -> Split:
    """How a pipeline can cut `root` (built on meta; `inputs` a meta batch) at its blocks."""
    if not stacks:
        return Split("", "it has no stack of repeated blocks (name one with model.blocks: PATH)")
    if len(stacks) == 1 and "." not in stacks[0] and _is_chain(root, stacks[0]):
        return Split(SplitKind.CHAIN)
    try:
        program, kept = _export_shallow(root, stacks, inputs)
    except Exception as err:  # noqa: BLE001 - the exporter's complaint, in one line, is the reason
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return Split("", f"torch.export cannot trace its forward ({type(err).__name__}: {first[:160]})")
    return Split(SplitKind.GRAPH, skip_span=skip_span(program, [b for b in blocks if b in kept]))


class _LeafTracer(fx.Tracer):
    def __init__(self, leaves: set[str]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


def chain_order(root: nn.Module, stack: str) -> list[str]:
    """The pieces a chain split runs, in order: root children, the stack's blocks in its place."""
    out = []
    for name, child in root.named_children():
        out += [f"{name}.{k}" for k, _ in child.named_children()] if name == stack else [name]
    return out


def _is_chain(root: nn.Module, stack: str) -> bool:
    """Whether root's forward is exactly chain_order's pieces, each fed the previous output."""
    pieces = chain_order(root, stack)
    try:
        graph = _LeafTracer(set(pieces)).trace(root)
    except Exception:  # noqa: BLE001 - any tracing failure just means "not provably a chain"
        return False
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    calls = [n for n in graph.nodes if n.op not in ("placeholder", "output")]
    outputs = [n for n in graph.nodes if n.op == "output"]
    if len(inputs) != 1 or [n.target for n in calls] != pieces or any(n.op != "call_module" for n in calls):
        return False
    previous = inputs[0]
    for node in calls:
        if node.args != (previous,) or node.kwargs:
            return False
        previous = node
    return outputs[0].args == (previous,)


SHALLOW_BLOCKS = 4  # blocks per stack kept for the export check: repeated blocks trace alike


def _export_shallow(root: nn.Module, stacks: Sequence[str], inputs: tuple[torch.Tensor, ...]):
    """torch.export of `root` with each stack cut to its first SHALLOW_BLOCKS blocks (a
    32-layer model exports in 19 s, 4 layers in 2.5 s); the whole model if the shortened
    one does not export (a forward that indexes a late block). Returns the program and
    the block names it holds."""
    saved = []
    try:
        for path in stacks:
            parent_path, _, attr = path.rpartition(".")
            parent = root.get_submodule(parent_path) if parent_path else root
            full = getattr(parent, attr)
            if len(full) > SHALLOW_BLOCKS and isinstance(full, (nn.ModuleList, nn.Sequential)):
                saved.append((parent, attr, full))
                setattr(parent, attr, type(full)(list(full)[:SHALLOW_BLOCKS]))
        try:
            program = torch.export.export(root, inputs, strict=False)
        except Exception:  # noqa: BLE001 - fall back to the whole model below
            if not saved:
                raise
            program = None
    finally:
        for parent, attr, full in saved:
            setattr(parent, attr, full)
    if program is None:
        program, saved = torch.export.export(root, inputs, strict=False), []
    kept = {f"{path}.{name}" for path in stacks for name, _ in root.get_submodule(path).named_children()}
    for _, _, full in saved:
        path = next(p for p in stacks if (root.get_submodule(p) is full))
        kept -= {f"{path}.{i}" for i in range(SHALLOW_BLOCKS, len(full))}
    return program, kept


def skip_span(program: "torch.export.ExportedProgram", blocks: Sequence[str]) -> int:
    """The most blocks any gradient-carrying tensor travels forward in the exported program.

    Each op belongs to the block on its module stack, or rides with the block before it
    (the embedding with the first). A value made in block i and read in block j spans
    j - i. torch.distributed.pipelining sends such a value to a later stage, but its
    backward only between adjacent stages (torch 2.13: "Backward of skip connections not
    supported yet"), so a span >= 2 limits the cuts. Gradients flow from the parameters:
    values derived from parameters only carry them (masks and rotary tables do not)."""
    index = {name: i for i, name in enumerate(blocks)}
    grad = set(program.graph_signature.inputs_to_parameters)
    segment: dict[str, int] = {}
    current, span = 0, 1
    for node in program.graph.nodes:
        if node.op != "call_function":
            segment[node.name] = current
            continue
        stack = node.meta.get("nn_module_stack") or {}
        inside = [index[fqn] for fqn, _ in stack.values() if fqn in index]
        current = max(inside) if inside else current
        segment[node.name] = current
        val = node.meta.get("val")
        floating = isinstance(val, torch.Tensor) and val.dtype.is_floating_point
        sources = [a for a in node.all_input_nodes]
        if floating and any(a.name in grad for a in sources):
            grad.add(node.name)
        for a in sources:
            if a.name in grad and a.op == "call_function":
                span = max(span, current - segment[a.name])
    return span
