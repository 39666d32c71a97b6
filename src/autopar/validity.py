"""Whether a strategy can run a model: every rule, in one place, shared by the runtime,
the cost model and the planner.

Why here, at the package root: the rules relate three inputs — the strategy (spec/),
the model (what models/ builds, what profile/ measures) and where it runs (a cluster
when planning, a torchrun launch when running). spec/ must not depend on the model or
on torch; cost/ and runtime/ are the two consumers and must not own the rules the other
obeys. So the rules sit beside errors.py, below plan/, cost/ and runtime/.

What the rules read of a model is a frozen `ModelFacts`, built either way:
  - `facts_from_model(mdef, spec)`: from the model built on the meta device (the runtime,
    before any process starts);
  - `facts_from_profile(profile)`: from a `ModelProfile` (cost model, planner, explain).
    The profiler records `facts_from_model` of the very build it profiles, so both
    builders agree by construction; the profile overrides only `layers` (the blocks it
    found contiguous, which a pipeline can cut between) and sets `subnet_priced`.

Each `check_*` is pure and returns the problem as text with the failing arithmetic
("dp(2) * tp(4) * pp(2) = 16 != nproc(8)"), or None. Three groups:
  - rules of the runtime (check_batch ... check_recompute): what `autopar run` executes;
  - limits of the cost model (`check_priced` = check_priced_subnet, _threads, _schedule):
    strategies the runtime runs but the cost model does not price, so the planner never
    proposes them and `autopar estimate` refuses them. Notably subnet=true: the runtime
    partitions MLP hidden layers and transformer FFNs alike, but the cost model models
    subnetwork training only over MLP layers (`is_mlp_layer`): subnet is planned for
    MLPs only, and `autopar run` still accepts it on a GPT;
  - where it runs: `check_devices` against a `Launch` (runtime), `check_cluster` against
    a `Cluster` (planning). A launch is never checked when planning.

`run_problems` (runtime) and `plan_problem` (cost model, planner) compose them. Every
rule of `run_problems` but the launch is in `plan_problem`, so a plan the planner
returns passes the runtime's preflight when launched on the devices it names. The cost
model alone (`CostModel.estimate`, published-run validation) does not know the
recipe's precision and skips `check_precision`: it can price Megatron's fp16 runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fnmatch import fnmatch
from typing import TYPE_CHECKING, Callable, Iterator, Optional

from torch import nn

from autopar.errors import InputError
from autopar.spec.cluster import Cluster
from autopar.spec.enums import DataPartition, Precision, Recompute, Schedule
from autopar.spec.recipe import GPTSpec, LlamaSpec, ModelSpec
from autopar.spec.strategy import Strategy

if TYPE_CHECKING:
    from autopar.models import ModelDef
    from autopar.profile.types import ModelProfile


@dataclass(frozen=True)
class ModelFacts:
    """What the rules need to know about a model (no weights)."""

    name: str
    layers: int  # blocks in the top-level `layers` ModuleList; 0: cannot be pipelined or fully recomputed
    has_tp_plan: bool  # the model names what tensor parallelism splits (runtime/tensor_parallel.py applies it)
    tp_units: tuple[tuple[str, int], ...]  # (what, size): tp must divide each size
    seq_len: Optional[int]  # transformers (gpt, llama) only: the dimension sequence parallelism splits
    feature_dim: Optional[int]  # input columns of the feature layer (data_partition=features)
    hidden_widths: tuple[int, ...]  # hidden groups that subnet training partitions (runtime/subnet.py)
    attention_cores: int  # CoreAttention modules (what selective recompute recomputes)
    subnet_priced: bool = False  # the cost model prices subnet=true for it (MLP layers); set from a profile


@dataclass(frozen=True)
class Launch:
    nproc: int  # devices per node: torchrun --nproc-per-node times threads
    nnodes: int = 1


# ------------------------------------------------------------------ facts


def facts_from_model(mdef: "ModelDef", spec: Optional[ModelSpec]) -> ModelFacts:
    """Facts of a model built on any device (meta: no weight memory). Without a spec the
    sequence length is unknown, and sequence parallelism is refused."""
    from autopar.models.attention import CoreAttention
    from autopar.runtime.subnet import hidden_groups

    module = mdef.module
    layers = getattr(module, "layers", None)
    feature = module.get_submodule(mdef.feature_layer) if mdef.feature_layer else None
    plan = mdef.tp_plan
    if plan is None and any(p.is_meta for p in module.parameters()):
        from autopar.profile.profiler import tp_plan_of

        plan = tp_plan_of(mdef)  # no declared plan: the Linear pairs the profiler finds
    return ModelFacts(
        name=mdef.name,
        layers=len(layers) if isinstance(layers, nn.ModuleList) else 0,
        has_tp_plan=bool(plan),
        tp_units=_head_units(spec) + _planned_units(module, plan or {}),
        seq_len=spec.seq_len if isinstance(spec, (GPTSpec, LlamaSpec)) else None,
        feature_dim=feature.in_features if isinstance(feature, nn.Linear) else None,
        hidden_widths=tuple(g.width for g in hidden_groups(module)),
        attention_cores=sum(isinstance(m, CoreAttention) for m in module.modules()),
    )


def facts_from_profile(profile: "ModelProfile") -> ModelFacts:
    """The facts the profiler recorded, seen as the cost model sees the model: a pipeline cuts
    only the blocks it found contiguous, and subnet is priced only over MLP layers."""
    from autopar.profile.types import is_mlp_layer

    if profile.facts is None:
        raise ValueError(f"profile of {profile.model} carries no model facts; build it with profile.profiler")
    mlp = any(is_mlp_layer(layer.stats) for layer in profile.layers)
    return replace(profile.facts, layers=profile.pipeline_blocks, subnet_priced=mlp)


def _head_units(spec: Optional[ModelSpec]) -> tuple[tuple[str, int], ...]:
    if isinstance(spec, LlamaSpec):
        return (("heads", spec.heads), ("kv_heads", spec.n_kv_heads))
    if isinstance(spec, GPTSpec):
        return (("heads", spec.heads),)
    return ()


# Which dimension each tensor-parallel style splits (Linear weight is (out, in)).
# The vocabulary styles are absent: DTensor shards the vocabulary unevenly (torch.chunk
# sizes) and the vocab-parallel embedding and loss stay exact (equivalence test, vocab 65),
# so tp need not divide it, unlike widths that views reshape into heads.
_SPLIT_DIM = {"colwise": "out_features", "rowwise": "in_features"}


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


# ------------------------------------------------------------------ where it runs


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


def check_cluster(s: Strategy, cluster: Cluster) -> Optional[str]:
    if s.devices > cluster.devices:
        return f"dp({s.dp}) * tp({s.tp}) * pp({s.pp}) * threads({s.threads}) = {s.devices} > devices({cluster.devices})"
    if s.threads > 1 and not cluster.device.shared_memory:
        return f"threads({s.threads}) > 1 needs devices that share memory (CPU cores); {cluster.device.name} does not"
    return None


# ------------------------------------------------------------------ rules of the runtime


def check_batch(s: Strategy, global_batch: int) -> Optional[str]:
    if s.is_async and s.threads > 1:  # Hogwild: the workers split each batch, no micro-batches
        workers = s.dp * s.threads
        if global_batch % workers:
            return f"global_batch({global_batch}) % Hogwild workers dp({s.dp}) * threads({s.threads}) = {global_batch % workers}"
        return None
    if s.data_partition is DataPartition.FEATURES:  # every worker sees every sample
        local, per = global_batch, f"global_batch({global_batch}) (data_partition=features)"
    elif global_batch % s.dp:
        return f"global_batch({global_batch}) % dp({s.dp}) = {global_batch % s.dp}; dp must divide the global batch"
    else:
        local, per = global_batch // s.dp, f"global_batch({global_batch}) / dp({s.dp}) = {global_batch // s.dp}"
    if s.microbatch is None:
        return None
    if s.microbatch > local:
        return f"microbatch({s.microbatch}) > per-replica batch {per}"
    if local % s.microbatch:
        return f"{per} samples per replica, not a multiple of microbatch({s.microbatch})"
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
    """torch.distributed.pipelining: 1F1B needs n >= pp; Interleaved1F1B runs n in rounds of
    max(1, n // pp) and needs n divisible by the round count."""
    n = s.num_microbatches(global_batch)
    if s.schedule is Schedule.ONE_F_ONE_B and n < s.pp:
        return f"schedule 1f1b needs num_microbatches({n}) >= pp({s.pp}); lower microbatch or use gpipe"
    rounds = max(1, n // s.pp)
    if s.schedule is Schedule.INTERLEAVED and n % rounds:
        return f"schedule interleaved needs num_microbatches({n}) divisible by max(1, {n} // pp({s.pp})) = {rounds}"
    return None


def check_tensor_parallel(s: Strategy, facts: ModelFacts) -> Optional[str]:
    if s.tp == 1:
        return None
    if not facts.has_tp_plan:
        return f"tp({s.tp}): model {facts.name} has no tensor-parallel plan (tp_plan)"
    if not facts.tp_units:
        return f"tp({s.tp}): the tp_plan of model {facts.name} splits no module; use tp=1"
    for what, size in facts.tp_units:
        if size % s.tp:
            return f"tp({s.tp}) must divide {what}({size}): {size} % {s.tp} = {size % s.tp}"
    return None


def check_sequence_parallel(s: Strategy, facts: ModelFacts) -> Optional[str]:
    if not s.sequence_parallel:
        return None
    if s.tp == 1:
        return "sequence_parallel needs tp > 1"
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


# ------------------------------------------------------------------ limits of the cost model


def check_priced(s: Strategy, facts: ModelFacts, global_batch: int) -> Optional[str]:
    """Strategies the runtime runs but the cost model does not price."""
    return check_priced_subnet(s, facts) or check_priced_threads(s) or check_priced_schedule(s, global_batch)


def check_priced_subnet(s: Strategy, facts: ModelFacts) -> Optional[str]:
    if s.subnet and not facts.subnet_priced:
        return (f"subnet=true: the cost model prices subnetwork training only over MLP layers (Linear pairs without "
                f"attention); model {facts.name} has none (autopar run accepts it; it cannot be estimated or planned)")
    return None


def check_priced_threads(s: Strategy) -> Optional[str]:
    if s.threads > 1 and (s.tp > 1 or s.pp > 1):
        return f"threads({s.threads}) with tp({s.tp}), pp({s.pp}): the cost model prices shared-memory workers only beside dp"
    return None


def check_priced_schedule(s: Strategy, global_batch: int) -> Optional[str]:
    if s.schedule is not Schedule.INTERLEAVED or s.pp == 1:
        return None
    m = s.num_microbatches(global_batch)
    if s.virtual_stages < 2:
        return "schedule=interleaved needs virtual_stages >= 2 (with one chunk per rank it is 1f1b)"
    if m % s.pp:  # Narayanan et al. 2021, Sec. 2.2.2: the bubble (p - 1) / v assumes m a multiple of p
        return f"interleaved schedule: micro-batches({m}) % pp({s.pp}) = {m % s.pp}; make the micro-batch count a multiple of pp"
    return None


# ------------------------------------------------------------------ composed


def _rules(s: Strategy, facts: ModelFacts, global_batch: int, precision: Optional[Precision]) -> Iterator[Callable[[], Optional[str]]]:
    """The runtime's rules, in the order a user should fix them."""
    yield lambda: check_batch(s, global_batch)
    yield lambda: check_async(s)
    yield lambda: check_features(s, facts)
    yield lambda: check_subnet(s, facts)
    yield lambda: check_pipeline(s, facts, global_batch)
    yield lambda: check_tensor_parallel(s, facts)
    yield lambda: check_sequence_parallel(s, facts)
    yield lambda: check_recompute(s, facts)
    if precision is not None:
        yield lambda: check_precision(s, precision)


def run_problems(s: Strategy, facts: ModelFacts, global_batch: int, precision: Precision, launch: Launch) -> list[str]:
    """Every reason `autopar run` refuses `s` on this launch."""
    found = [check_devices(s, launch)] + [rule() for rule in _rules(s, facts, global_batch, precision)]
    return [p for p in found if p]


def plan_problem(s: Strategy, facts: ModelFacts, global_batch: int, precision: Optional[Precision],
                 cluster: Optional[Cluster]) -> Optional[str]:
    """The first reason `s` cannot be planned: the runtime's rules, the cost model's limits and,
    given a cluster, its size. precision None (the cost model alone): fp16 is not checked."""
    if cluster is not None and (problem := check_cluster(s, cluster)):
        return problem
    for rule in _rules(s, facts, global_batch, precision):
        if problem := rule():
            return problem
    return check_priced(s, facts, global_batch)


def validate(s: Strategy, facts: ModelFacts, global_batch: int, precision: Precision, launch: Launch) -> None:
    """Raise the runtime's first problem as an InputError (exit code 2), counting the others."""
    found = run_problems(s, facts, global_batch, precision, launch)
    if found:
        more = f" (and {len(found) - 1} more problem{'s' if len(found) > 2 else ''})" if len(found) > 1 else ""
        raise InputError("--strategy", s.to_text(), found[0] + more)
