"""The profile of a model: ordered placeable layers with their per-sample costs.

All byte and FLOP figures are per input sample, measured in the profiling dtype
(the recipe's compute precision). Identical layers share one `LayerStats`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from autopar.profile.facts import ModelFacts


@dataclass(frozen=True)
class Gemm:
    """One forward matrix product, (m x k) @ (k x n), repeated `count` times.

    If `rows_scale_with_batch`, m is rows per sample (m * b at micro-batch b) and
    count is fixed; otherwise (batched products, e.g. attention heads) count is per
    sample. `tp_split` names what tensor parallelism divides: "n" (column-parallel),
    "k" (row-parallel), "count" (heads) or "" (replicated).
    """

    m: float
    n: int
    k: int
    count: float
    rows_scale_with_batch: bool
    tp_split: str
    expert: bool = False  # one routed expert's product (models/moe.py): under ep its rows grow ep-fold, its experts per rank fall

    def flops_per_sample(self) -> float:
        return 2.0 * self.m * self.n * self.k * self.count


@dataclass(frozen=True)
class LayerStats:
    kind: str  # class name of the layer module
    # compute, per sample
    forward_flops: float
    backward_flops: float
    forward_tp_flops: float  # part of forward_flops that tensor parallelism divides
    core_flops: float  # forward FLOPs of the attention core (redone by selective recompute)
    gemms: tuple[Gemm, ...]
    memory_bound_bytes: float  # bytes read + written by non-matmul ops, forward
    memory_bound_tp_bytes: float  # part of the above inside tensor-parallel regions
    backward_memory_bound_bytes: float  # bytes moved by non-matmul ops in backward
    core_memory_bound_bytes: float  # forward non-matmul bytes inside the attention core
    forward_ops: int  # operators launched (for per-launch overhead), whole profiled batch
    backward_ops: int
    # parameters
    params: int
    tp_params: int  # parameters tensor parallelism shards
    # activations, per sample
    saved_bytes: float  # saved for backward (deduplicated by storage)
    saved_tp_bytes: float  # part inside tensor-parallel regions (divided by tp)
    saved_core_bytes: float  # part that selective recompute frees (attention core internals)
    input_bytes: float  # the layer's floating inputs (kept under full recompute)
    output_bytes: float  # what crosses a pipeline cut after this layer
    output_tp_sharded: bool  # output leaves the layer split across tensor-parallel ranks
    # tensor-parallel collectives per sample (Megatron: 2 all-reduces forward, 2 backward per block)
    tp_fwd_allreduce_bytes: float
    tp_fwd_allreduces: int
    tp_bwd_allreduce_bytes: float
    tp_bwd_allreduces: int
    tp_styles: tuple[tuple[str, str], ...]  # (submodule, TPStyle value) applied in this layer
    tp_candidates: tuple[tuple[str, str], ...]  # (submodule, kind): linear, conv, embedding, attention
    has_core: bool  # a parameter-free attention core submodule exists (selective recompute applies)
    # mixture of experts (models/moe.py GroupedExperts inside the layer)
    expert_params: int = 0  # parameters of the routed experts (expert parallelism splits them)
    expert_flops: float = 0.0  # forward FLOPs of the routed experts, per sample
    dispatch_bytes: float = 0.0  # rows sent to the experts per sample (tokens x top_k x hidden), one way
    kv_bytes: float = 0.0  # keys and values entering the attention cores, per sample (what context parallelism gathers)


def is_mlp_layer(stats: LayerStats) -> bool:
    """Only column/row-split Linears, no attention: hidden units independent subnetwork
    training can partition (Yuan et al. 2022)."""
    return bool(stats.tp_styles) and not stats.has_core and all(s in ("colwise", "rowwise") for _, s in stats.tp_styles)


@dataclass(frozen=True)
class LayerProfile:
    name: str  # module path, e.g. "layers.3"
    group: int  # identical layers share a group and their stats
    stats: LayerStats
    shared_params: int = 0  # parameters also held by another layer (tied weights)


@dataclass(frozen=True)
class ModelProfile:
    model: str
    layers: tuple[LayerProfile, ...]
    dtype_bytes: int  # bytes per activation element in the profiled precision
    params: int  # distinct parameters (tied weights once)
    sample_bytes: float  # one input sample as stored (inputs + target)
    tp_units: tuple[int, ...] = ()  # tensor-parallel degree must divide each of these
    feature_dim: int | None = None  # input features of the feature-partitioned Linear
    profiled_batch: int = 1
    notes: tuple[str, ...] = ()
    # The blocks a pipeline cuts between (profile/structure.py): indices into `layers` of
    # the blocks of every stack, in execution order. A stage starts at a block; layers
    # before the first block ride with it (the embedding), layers after a block with it
    # (the head with the last), as Megatron-LM and torchtitan place them. None: no blocks.
    cuts: Optional[tuple[int, ...]] = None
    active_params: Optional[int] = None  # mixture of experts: parameters one token uses (None: all, a dense model)
    # What the techniques' rules read of the model, found on the build profiled here.
    facts: Optional[ModelFacts] = None

    @property
    def pipeline_blocks(self) -> int:
        return len(self.cuts) if self.cuts else 0

    @property
    def forward_flops(self) -> float:
        return sum(layer.stats.forward_flops for layer in self.layers)

    @property
    def backward_flops(self) -> float:
        return sum(layer.stats.backward_flops for layer in self.layers)

    def groups(self) -> dict[int, tuple[LayerStats, int]]:
        """group -> (stats, number of layers in the group)."""
        out: dict[int, tuple[LayerStats, int]] = {}
        for layer in self.layers:
            stats, n = out.get(layer.group, (layer.stats, 0))
            out[layer.group] = (stats, n + 1)
        return out

    def totals(self) -> dict[str, float]:
        s = [layer.stats for layer in self.layers]
        return {
            "params": self.params,
            "forward_flops": sum(x.forward_flops for x in s),
            "backward_flops": sum(x.backward_flops for x in s),
            "saved_activation_bytes": sum(x.saved_bytes for x in s),
            "memory_bound_bytes": sum(x.memory_bound_bytes for x in s),
            "sample_bytes": self.sample_bytes,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "per": "sample",
            "dtype_bytes": self.dtype_bytes,
            "layers": [
                {"name": layer.name, "group": layer.group, "shared_params": layer.shared_params, **_stats_dict(layer.stats)}
                for layer in self.layers
            ],
            "totals": self.totals(),
            "tp_units": list(self.tp_units),
            "params": self.params,
            "active_params": self.active_params,
            "sample_bytes": self.sample_bytes,
            "feature_dim": self.feature_dim,
            "profiled_batch": self.profiled_batch,
            "notes": list(self.notes),
            "cuts": list(self.cuts) if self.cuts else None,
            "facts": self.facts.to_dict() if self.facts else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelProfile":
        """The inverse of to_dict (per sample): identical layers share one LayerStats again."""
        if d.get("per", "sample") != "sample":
            raise ValueError(f"a profile per {d['per']} cannot be reloaded; save it per sample")
        by_group: dict[int, LayerStats] = {}
        layers = []
        for raw in d["layers"]:
            stats = by_group.get(raw["group"]) or by_group.setdefault(raw["group"], _stats_from_dict(raw))
            layers.append(LayerProfile(raw["name"], raw["group"], stats, raw.get("shared_params", 0)))
        return cls(model=d["model"], layers=tuple(layers), dtype_bytes=d["dtype_bytes"], params=d["params"],
                   sample_bytes=d["sample_bytes"], tp_units=tuple(d.get("tp_units", ())), feature_dim=d.get("feature_dim"),
                   profiled_batch=d.get("profiled_batch", 1), notes=tuple(d.get("notes", ())),
                   cuts=tuple(d["cuts"]) if d.get("cuts") else None, active_params=d.get("active_params"),
                   facts=ModelFacts.from_dict(d["facts"]) if d.get("facts") else None)


_STATS_FIELDS = tuple(LayerStats.__dataclass_fields__)


def _stats_from_dict(raw: dict[str, Any]) -> LayerStats:
    values = {k: raw[k] for k in _STATS_FIELDS if k in raw}  # fields added later keep their defaults
    values["gemms"] = tuple(Gemm(**g) for g in raw["gemms"])
    values["tp_styles"] = tuple(tuple(x) for x in raw["tp_styles"])
    values["tp_candidates"] = tuple(tuple(x) for x in raw["tp_candidates"])
    return LayerStats(**values)


def _stats_dict(stats: LayerStats) -> dict[str, Any]:
    d = asdict(stats)
    d["gemms"] = [asdict(g) for g in stats.gemms]
    d["tp_styles"] = [list(x) for x in stats.tp_styles]
    d["tp_candidates"] = [list(x) for x in stats.tp_candidates]
    return d
