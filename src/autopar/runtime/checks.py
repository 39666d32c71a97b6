"""Every reason a strategy cannot run a recipe, found before any process starts.

Each `check_*` is a pure function returning the problem as text (with the failing
arithmetic, e.g. "dp(2) * tp(4) * pp(2) = 16 != nproc(8)") or None. The
model-dependent ones read `ModelFacts`, extracted once from the model built on the
meta device. `validate` raises the first problem as an InputError (exit code 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Callable, Optional

from torch import nn

from autopar.errors import InputError
from autopar.models import ModelDef
from autopar.models.attention import CoreAttention
from autopar.spec.enums import DataPartition, Precision, Recompute, Schedule
from autopar.spec.recipe import GPTSpec, LlamaSpec, ModelSpec
from autopar.spec.strategy import Strategy


@dataclass(frozen=True)
class ModelFacts:
    """What the checks need to know about a model (no weights)."""

    name: str
    layers: int  # blocks in a top-level `layers` list; 0: the model cannot be pipelined
    has_tp_plan: bool
    tp_units: tuple[tuple[str, int], ...]  # (what, size): tp must divide each size
    seq_len: Optional[int]  # transformers only
    feature_dim: Optional[int]  # input columns of the feature layer (data_partition=features)
    hidden_widths: tuple[int, ...]  # hidden groups that subnet training partitions
    attention_cores: int  # CoreAttention modules (selective recompute)


@dataclass(frozen=True)
class Launch:
    nproc: int  # devices per node: torchrun --nproc-per-node times threads
    nnodes: int = 1


def model_facts(mdef: ModelDef, spec: ModelSpec) -> ModelFacts:
    from autopar.runtime.subnet import hidden_groups

    module = mdef.module
    layers = getattr(module, "layers", None)
    feature = _module(module, mdef.feature_layer)
    return ModelFacts(
        name=mdef.name,
        layers=len(layers) if isinstance(layers, nn.ModuleList) else 0,
        has_tp_plan=bool(mdef.tp_plan),
        tp_units=_head_units(spec) + _planned_units(module, mdef.tp_plan or {}),
        seq_len=spec.seq_len if isinstance(spec, (GPTSpec, LlamaSpec)) else None,
        feature_dim=feature.in_features if isinstance(feature, nn.Linear) else None,
        hidden_widths=tuple(g.width for g in hidden_groups(module)),
        attention_cores=sum(isinstance(m, CoreAttention) for m in module.modules()),
    )


def _module(root: nn.Module, name: Optional[str]) -> Optional[nn.Module]:
    return root.get_submodule(name) if name else None


def _head_units(spec: ModelSpec) -> tuple[tuple[str, int], ...]:
    if isinstance(spec, LlamaSpec):
        return (("heads", spec.heads), ("kv_heads", spec.n_kv_heads))
    if isinstance(spec, GPTSpec):
        return (("heads", spec.heads),)
    return ()


# Which dimension each tensor-parallel style splits (Linear weight is (out, in)).
_SPLIT_DIM = {"colwise": "out_features", "rowwise": "in_features", "vocab_head": "out_features", "vocab_embedding": "num_embeddings"}


def _planned_units(module: nn.Module, plan: dict[str, str]) -> tuple[tuple[str, int], ...]:
    units: dict[str, int] = {}
    for name, sub in module.named_modules():
        style = next((s for pattern, s in plan.items() if fnmatch(name, pattern)), None)
        if style in _SPLIT_DIM:
            attr = _SPLIT_DIM[style]
            units.setdefault(f"{_generic(name)}.{attr}", getattr(sub, attr))
    return tuple(units.items())


def _generic(name: str) -> str:
    """layers.3.mlp.fc1 -> layers.*.mlp.fc1 (one message per kind of module)."""
    return ".".join("*" if part.isdigit() else part for part in name.split("."))


# ------------------------------------------------------------------ the checks


def check_devices(s: Strategy, launch: Launch) -> Optional[str]:
    factors = [f"dp({s.dp})", f"tp({s.tp})", f"pp({s.pp})"] + ([f"threads({s.threads})"] if s.threads > 1 else [])
    have = launch.nproc * launch.nnodes
    if s.devices != have:
        nodes = f" * nnodes({launch.nnodes}) = {have}" if launch.nnodes > 1 else ""
        return f"{' * '.join(factors)} = {s.devices} != nproc({launch.nproc}){nodes}"
    processes = s.dp * s.tp * s.pp
    if processes % launch.nnodes:
        return f"processes dp({s.dp}) * tp({s.tp}) * pp({s.pp}) = {processes} do not split over nnodes({launch.nnodes})"
    return None


def check_batch(s: Strategy, global_batch: int) -> Optional[str]:
    replicas = 1 if s.data_partition is DataPartition.FEATURES else s.dp
    if s.is_async and s.threads > 1:
        replicas *= s.threads  # Hogwild workers split the batch
        if global_batch % replicas:
            return f"global_batch({global_batch}) is not divisible by Hogwild threads({s.threads})"
        return None
    micro = s.microbatch or global_batch // replicas
    if micro > global_batch // replicas:
        return f"microbatch({micro}) > per-replica batch global_batch({global_batch}) / dp({replicas}) = {global_batch // replicas}"
    if global_batch % (replicas * micro):
        return f"global_batch({global_batch}) is not divisible by dp({replicas}) * microbatch({micro}) = {replicas * micro}"
    return None


def check_pipeline(s: Strategy, facts: ModelFacts, global_batch: int) -> Optional[str]:
    if s.pp == 1:
        if s.virtual_stages > 1:
            return f"virtual_stages({s.virtual_stages}) needs pp > 1"
        return None if s.stages is None or len(s.stages) == 1 else f"stages {'/'.join(map(str, s.stages))} given but pp(1)"
    if facts.layers == 0:
        return f"pipeline parallelism needs a model with a top-level `layers` ModuleList; {facts.name} has none"
    n_stages = s.pp * s.virtual_stages
    if n_stages > facts.layers:
        return f"pp({s.pp}) * virtual_stages({s.virtual_stages}) = {n_stages} stages > layers({facts.layers})"
    if s.virtual_stages > 1 and s.schedule is not Schedule.INTERLEAVED:
        return f"virtual_stages({s.virtual_stages}) needs schedule=interleaved (got {s.schedule.value})"
    if s.stages is not None and (len(s.stages) != n_stages or sum(s.stages) != facts.layers):
        return (
            f"stages {'/'.join(map(str, s.stages))}: {len(s.stages)} stages holding {sum(s.stages)} layers; "
            f"need pp({s.pp}) * virtual_stages({s.virtual_stages}) = {n_stages} stages holding layers({facts.layers})"
        )
    return _check_microbatches(s, global_batch)


def _check_microbatches(s: Strategy, global_batch: int) -> Optional[str]:
    n = s.num_microbatches(global_batch)
    if s.schedule is Schedule.ONE_F_ONE_B and n < s.pp:
        return f"schedule 1f1b needs num_microbatches({n}) >= pp({s.pp}); lower microbatch or use gpipe"
    rounds = max(1, n // s.pp)
    if s.schedule is Schedule.INTERLEAVED and n % rounds:
        return f"schedule interleaved needs num_microbatches({n}) divisible by max(1, {n} // pp({s.pp})) = {rounds}"
    return None


def check_tensor_parallel(s: Strategy, facts: ModelFacts) -> Optional[str]:
    if s.tp == 1:
        return "sequence_parallel needs tp > 1" if s.sequence_parallel else None
    if not facts.has_tp_plan:
        return f"tp({s.tp}): model {facts.name} has no tensor-parallel plan (tp_plan)"
    for what, size in facts.tp_units:
        if size % s.tp:
            return f"tp({s.tp}) must divide {what}({size}): {size} % {s.tp} = {size % s.tp}"
    if s.sequence_parallel:
        if facts.seq_len is None:
            return f"sequence_parallel needs a transformer (gpt, llama); {facts.name} has no sequence dimension"
        if facts.seq_len % s.tp:
            return f"sequence_parallel: tp({s.tp}) must divide seq_len({facts.seq_len}): {facts.seq_len} % {s.tp} = {facts.seq_len % s.tp}"
    return None


def check_async(s: Strategy) -> Optional[str]:
    if not s.is_async:
        if s.sync_every > 1 and not s.subnet:
            return f"sync_every({s.sync_every}) applies to sync=async or subnet=true"
        return None
    if s.pp > 1 or s.tp > 1:
        return f"sync=async trains full replicas; it needs pp(1) and tp(1), got pp({s.pp}), tp({s.tp})"
    if s.zero:
        return f"sync=async keeps full replicas; zero({s.zero}) shards them; use zero=0"
    if s.threads > 1 and s.dp > 1:
        return f"Hogwild (sync=async, threads({s.threads})) runs in one process group; it needs dp(1), got dp({s.dp})"
    if s.threads > 1 and s.microbatch is not None:
        return f"microbatch({s.microbatch}): each Hogwild worker takes global_batch / threads samples per step; leave microbatch out"
    if s.threads == 1 and s.dp == 1:
        return "sync=async needs dp > 1 (local SGD) or threads > 1 (Hogwild)"
    return None


def check_subnet(s: Strategy, facts: ModelFacts) -> Optional[str]:
    if not s.subnet:
        return None
    if s.microbatch is not None:
        return f"microbatch({s.microbatch}): subnet=true trains each subnetwork on its whole share of the batch; leave microbatch out"
    if s.dp == 1 or s.tp > 1 or s.pp > 1 or s.zero or s.is_async or s.data_partition is DataPartition.FEATURES:
        return "subnet=true needs dp > 1 with tp(1), pp(1), zero(0), sync=sync and data_partition=samples"
    if not facts.hidden_widths:
        return f"subnet=true partitions MLP/FFN hidden units; model {facts.name} has none"
    narrow = min(facts.hidden_widths)
    if narrow < s.dp:
        return f"subnet=true: the narrowest hidden layer ({narrow} units) cannot be split over dp({s.dp})"
    return None


def check_features(s: Strategy, facts: ModelFacts) -> Optional[str]:
    if s.data_partition is not DataPartition.FEATURES:
        return None
    if facts.feature_dim is None:
        return f"data_partition=features needs a model with a feature layer (mlp, wide_linear); {facts.name} has none"
    if s.tp > 1 or s.pp > 1 or s.zero or s.is_async:
        return "data_partition=features splits the input layer over dp; it needs tp(1), pp(1), zero(0), sync=sync"
    if s.dp > facts.feature_dim:
        return f"data_partition=features: dp({s.dp}) > input features({facts.feature_dim})"
    return None


def check_precision(s: Strategy, precision: Precision) -> Optional[str]:
    if precision is Precision.FP16 and (s.zero >= 2 or s.tp > 1 or s.pp > 1 or s.subnet or (s.is_async and s.threads > 1)):
        return "precision fp16 needs loss scaling, which the runtime applies only with DDP/ZeRO-1/local SGD/features; use bf16"
    return None


def check_recompute(s: Strategy, facts: ModelFacts) -> Optional[str]:
    if s.recompute is Recompute.SELECTIVE and facts.attention_cores == 0:
        return f"recompute=selective recomputes attention cores; model {facts.name} has none (use full)"
    if s.recompute is Recompute.FULL and facts.layers == 0:
        return f"recompute=full checkpoints each block of `layers`; model {facts.name} has none"
    return None


def problems(s: Strategy, facts: ModelFacts, global_batch: int, precision: Precision, launch: Launch) -> list[str]:
    """Every problem, in the order a user should fix them."""
    found: list[Optional[str]] = [check_devices(s, launch), check_batch(s, global_batch)]
    checks: list[Callable[[], Optional[str]]] = [
        lambda: check_async(s),
        lambda: check_features(s, facts),
        lambda: check_subnet(s, facts),
        lambda: check_pipeline(s, facts, global_batch),
        lambda: check_tensor_parallel(s, facts),
        lambda: check_recompute(s, facts),
        lambda: check_precision(s, precision),
    ]
    found += [c() for c in checks]
    return [p for p in found if p]


def validate(s: Strategy, facts: ModelFacts, global_batch: int, precision: Precision, launch: Launch) -> None:
    found = problems(s, facts, global_batch, precision, launch)
    if found:
        more = f" (and {len(found) - 1} more problem{'s' if len(found) > 2 else ''})" if len(found) > 1 else ""
        raise InputError("--strategy", s.to_text(), found[0] + more)
