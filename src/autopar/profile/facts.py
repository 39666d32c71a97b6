"""What the strategy rules know about a model, extracted once, by the profiler, into data.

`ModelFacts` is built from the very meta-device build the profiler traces and travels
in its `ModelProfile`. The rules (autopar.techniques.*.rules), the cost model, the
planner and the runtime's preflight read only this record: none of them looks at an
`nn.Module`. The runtime applies the tensor-parallel plan recorded here, so what is
checked is what runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fnmatch import fnmatch
from typing import Any, Optional

from torch import nn

from autopar.models.attention import CoreAttention
from autopar.models.gpt import GPT
from autopar.models.llama import Llama
from autopar.models.mlp import MLP
from autopar.models.moe import MoE, expert_modules
from autopar.models.wide_linear import WideLinear
from autopar.profile.linears import features
from autopar.profile.structure import Split


@dataclass(frozen=True)
class HiddenGroup:
    """The hidden units independent subnetwork training partitions (Yuan et al. 2022)."""

    producers: tuple[str, ...]  # Linears whose output features are the units
    consumers: tuple[str, ...]  # Linears whose input features are the units
    width: int


@dataclass(frozen=True)
class ModelFacts:
    """What the rules need to know about a model (no weights)."""

    name: str
    layers: int  # blocks a pipeline can cut between (those of every stack); 0: none
    tp_plan: tuple[tuple[str, str], ...]  # (module-name pattern, TPStyle value): declared, else the Linear pairs found
    tp_units: tuple[tuple[str, int], ...]  # (what, size): tp must divide each size
    seq_len: Optional[int]  # transformers (gpt, llama) only: the dimension sequence parallelism splits
    feature_dim: Optional[int]  # input columns of the feature layer (data_partition=features)
    hidden_widths: tuple[int, ...]  # widths of the hidden groups subnet training partitions
    attention_cores: int  # CoreAttention modules (what selective recompute recomputes)
    mlp_layers: bool = False  # a layer made only of column/row Linear pairs (where the cost model prices subnet)
    stacks: tuple[str, ...] = ()  # containers of the repeated blocks (profile/structure.py)
    blocks: tuple[str, ...] = ()  # the blocks' module names, in execution order
    pipeline_split: str = ""  # how a pipeline cuts it: "chain" (hand-cut slices) or "graph" (traced); "": it cannot
    pipeline_problem: Optional[str] = None  # why it cannot
    batch_norms: int = 0  # BatchNorm layers: their statistics follow how the batch is cut
    pipeline_skip: int = 1  # graph split: most blocks a gradient-carrying tensor skips (structure.skip_span)
    experts: int = 0  # mixture of experts: experts per MoE layer (0: dense)
    top_k: int = 0  # experts each token is routed to
    expert_modules: tuple[str, ...] = ()  # the stacked-expert modules expert parallelism splits (models/moe.py expert_modules)

    @property
    def has_tp_plan(self) -> bool:
        return bool(self.tp_plan)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelFacts":
        return cls(**{**d, "tp_plan": tuple(tuple(x) for x in d["tp_plan"]), "tp_units": tuple(tuple(x) for x in d["tp_units"]),
                      "hidden_widths": tuple(d["hidden_widths"]), "stacks": tuple(d.get("stacks", ())),
                      "blocks": tuple(d.get("blocks", ())), "expert_modules": tuple(d.get("expert_modules", ()))})


def model_facts(module: nn.Module, name: str, tp_plan: dict[str, str], seq_len: Optional[int], head_units: tuple[tuple[str, int], ...],
                feature_layer: Optional[str], blocks: tuple[str, ...], mlp_layers: bool, stacks: tuple[str, ...],
                split: Optional[Split], moe: Optional[tuple[int, int]] = None) -> ModelFacts:
    """Facts of `module` (any device; meta allocates nothing). `tp_plan` is the declared
    plan or the one the profiler detected; `blocks` the blocks of `stacks` the profile found;
    `split` how a pipeline cuts them (profile/structure.py); `moe` (experts, top k) of a
    model whose experts are not models/moe.py's (transformers' own)."""
    feature = module.get_submodule(feature_layer) if feature_layer else None
    grouped = [(n, m) for n, m in module.named_modules() if isinstance(m, MoE)]
    if grouped:
        moe = (grouped[0][1].experts.local_experts, grouped[0][1].top_k)
    return ModelFacts(
        name=name,
        layers=len(blocks),
        tp_plan=tuple(tp_plan.items()),
        tp_units=head_units + _planned_units(module, tp_plan),
        seq_len=seq_len,
        feature_dim=feature.in_features if isinstance(feature, nn.Linear) else None,
        hidden_widths=tuple(g.width for g in hidden_groups(module)),
        attention_cores=sum(isinstance(m, CoreAttention) for m in module.modules()),
        mlp_layers=mlp_layers,
        stacks=stacks,
        blocks=blocks,
        pipeline_split=split.kind if split else "",
        pipeline_problem=split.problem if split else "it has no stack of repeated blocks (name one with model.blocks: PATH)",
        pipeline_skip=split.skip_span if split else 1,
        batch_norms=sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()),
        experts=moe[0] if moe else 0,
        top_k=moe[1] if moe else 0,
        expert_modules=tuple(n for n, _ in expert_modules(module)),
    )


# Which dimension each tensor-parallel style splits (a Linear's weight is (out, in)).
# The vocabulary styles are absent: DTensor shards the vocabulary unevenly (torch.chunk
# sizes) and the vocab-parallel embedding and loss stay exact (equivalence test, vocab 65),
# so tp need not divide it, unlike widths that views reshape into heads.
_SPLIT_DIM = {"colwise": ("out_features", 1), "packed_qkv": ("out_features", 1), "rowwise": ("in_features", 0)}  # name, index into features()


def _planned_units(module: nn.Module, plan: dict[str, str]) -> tuple[tuple[str, int], ...]:
    units: dict[str, int] = {}
    for name, sub in module.named_modules():
        style = next((s for pattern, s in plan.items() if fnmatch(name, pattern)), None)
        dims = features(sub)
        if style in _SPLIT_DIM and dims is not None:
            attr, index = _SPLIT_DIM[style]
            units.setdefault(f"{_generic(name)}.{attr}", dims[index])
    return tuple(units.items())


def _generic(name: str) -> str:
    """layers.3.mlp.fc1 -> layers.*.mlp.fc1 (one message per kind of module)."""
    return ".".join("*" if part.isdigit() else part for part in name.split("."))


def hidden_groups(model: nn.Module) -> list[HiddenGroup]:
    """The partitionable hidden layers of the built-in families (none for others)."""
    if isinstance(model, MLP):
        fcs = [f"layers.{i}.fc" for i in range(len(model.layers))]
        return [HiddenGroup((fcs[i],), (fcs[i + 1],), model.layers[i].fc.out_features) for i in range(len(fcs) - 1)]
    if isinstance(model, WideLinear) and len(model.layers) == 2:
        return [HiddenGroup(("layers.0.fc",), ("layers.1",), model.layers[1].in_features)]
    if isinstance(model, (GPT, Llama)) and any(isinstance(m, MoE) for m in model.modules()):
        return []  # routed experts, not one hidden layer to partition
    if isinstance(model, GPT):
        return [HiddenGroup((f"layers.{i}.mlp.fc1",), (f"layers.{i}.mlp.fc2",), b.mlp.fc1.out_features) for i, b in enumerate(model.layers)]
    if isinstance(model, Llama):
        return [HiddenGroup((f"layers.{i}.mlp.w1", f"layers.{i}.mlp.w3"), (f"layers.{i}.mlp.w2",), b.mlp.w1.out_features)
                for i, b in enumerate(model.layers)]
    return []
