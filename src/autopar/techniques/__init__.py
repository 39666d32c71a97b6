"""Every parallelism technique, one folder each, and the composition of their rules.

TECHNIQUES lists them in the order the runtime applies them to a model (torchtitan's:
pipeline split -> tensor/sequence parallel -> recomputation -> data parallel/sharding),
followed by the techniques that change the training loop rather than wrap the model.
Their rules are checked in the same order; the launch (runtime) or the cluster
(planning) is checked first, fp16's loss-scaling limits last.

  folder       Strategy fields                           runtime (PyTorch API)
  pipeline     pp, schedule, virtual_stages, stages      torch.distributed.pipelining
  tensor       tp, sequence_parallel                     DTensor parallelize_module
  context      cp                                        zigzag sequence chunks, K/V all_gather_tensor_autograd
  expert       ep                                        experts sliced per rank, all_to_all_single_autograd dispatch
  recompute    recompute                                 checkpoint_wrapper (non-reentrant)
  offload      offload                                   FSDP2 CPUOffloadPolicy (passed to data's fully_shard)
  data         dp, zero, dp_shard                        DDP, FSDP2 fully_shard (HSDP on a 2-D mesh), ZeroRedundancyOptimizer
  microbatch   microbatch                                gradient accumulation (no_sync)
  features     data_partition                            autograd all-reduce of partial products
  local_sgd    sync, sync_every                          model_averaging.average_parameters
  subnet       subnet                                    partitioned hidden units (IST)
  threads      threads                                   intra-op threads / torch.multiprocessing Hogwild

Three consumers share the rules: the runtime (`run_problems`: what `autopar run` refuses
before any process starts), the cost model and the planner (`plan_problem`: the same,
plus what the cost model does not price, plus the cluster's size). So every plan passes
the runtime's preflight on the devices it names (a test checks it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

from autopar.errors import InputError
from autopar.profile.facts import ModelFacts
from autopar.spec.cluster import Cluster
from autopar.spec.enums import Precision
from autopar.spec.strategy import Strategy
from autopar.techniques import context, data, expert, features, local_sgd, microbatch, offload, pipeline, recompute, subnet, tensor, threads
from autopar.techniques.base import Dimension, Predicate, RuleInput, Technique

TECHNIQUES: tuple[Technique, ...] = tuple(
    m.TECHNIQUE for m in (pipeline, tensor, context, expert, recompute, offload, data, microbatch, features, local_sgd, subnet, threads)
)


@dataclass(frozen=True)
class Launch:
    nproc: int  # devices per node: torchrun --nproc-per-node times threads
    nnodes: int = 1


class InvalidStrategy(InputError):
    """A strategy that cannot run (as opposed to one that does not fit in memory)."""


# ------------------------------------------------------------------ where it runs


def check_devices(s: Strategy, launch: Launch) -> Optional[str]:
    factors = [f"dp({s.dp})", *([f"cp({s.cp})"] if s.cp > 1 else []), f"tp({s.tp})", f"pp({s.pp})"] + ([f"threads({s.threads})"] if s.threads > 1 else [])
    have = launch.nproc * launch.nnodes
    if s.devices != have:
        nodes = f" * nnodes({launch.nnodes}) = {have}" if launch.nnodes > 1 else ""
        return f"{' * '.join(factors)} = {s.devices} != nproc({launch.nproc}){nodes}"
    processes = s.dp * s.cp * s.tp * s.pp
    if processes % launch.nnodes:
        return f"processes {' * '.join(factors[:-1] if s.threads > 1 else factors)} = {processes} do not split over nnodes({launch.nnodes})"
    return None


def check_cluster(s: Strategy, cluster: Cluster) -> Optional[str]:
    if s.devices > cluster.devices:
        cp = f" * cp({s.cp})" if s.cp > 1 else ""
        return f"dp({s.dp}){cp} * tp({s.tp}) * pp({s.pp}) * threads({s.threads}) = {s.devices} > devices({cluster.devices})"
    if s.threads > 1 and not cluster.device.shared_memory:
        return f"threads({s.threads}) > 1 needs devices that share memory (CPU cores); {cluster.device.name} does not"
    return offload.rules.check_offload_cluster(s, cluster.device.shared_memory, cluster.device.name)


def check_precision(s: Strategy, precision: Optional[Precision]) -> Optional[str]:
    if precision is Precision.FP16 and not all(t.fp16_ok(s) for t in TECHNIQUES):
        return "precision fp16 needs loss scaling, which the runtime applies only with DDP/ZeRO-1/local SGD/features; use bf16"
    return None


# ------------------------------------------------------------------ composed


def _problems(s: Strategy, r: RuleInput, priced: bool) -> Iterator[str]:
    for t in TECHNIQUES:
        for rule in t.rules:
            if (problem := rule(s, r)) is not None:
                yield problem
    if (problem := check_precision(s, r.precision)) is not None:
        yield problem
    if priced:
        for t in TECHNIQUES:
            for rule in t.priced:
                if (problem := rule(s, r)) is not None:
                    yield problem


def run_problems(s: Strategy, facts: ModelFacts, global_batch: int, precision: Precision, launch: Launch) -> list[str]:
    """Every reason `autopar run` refuses `s` on this launch."""
    found = [check_devices(s, launch), *_problems(s, RuleInput(facts, global_batch, precision), priced=False)]
    return [p for p in found if p]


def plan_problem(s: Strategy, facts: ModelFacts, global_batch: int, precision: Optional[Precision],
                 cluster: Optional[Cluster]) -> Optional[str]:
    """The first reason `s` cannot be planned: the runtime's rules, the cost model's limits and,
    given a cluster, its size. precision None (the cost model alone): fp16 is not checked."""
    if cluster is not None and (problem := check_cluster(s, cluster)):
        return problem
    return next(_problems(s, RuleInput(facts, global_batch, precision), priced=True), None)


def validate(s: Strategy, facts: ModelFacts, global_batch: int, precision: Precision, launch: Launch) -> None:
    """Raise the runtime's first problem as an InputError (exit code 2), counting the others."""
    found = run_problems(s, facts, global_batch, precision, launch)
    if found:
        more = f" (and {len(found) - 1} more problem{'s' if len(found) > 2 else ''})" if len(found) > 1 else ""
        raise InvalidStrategy("--strategy", s.to_text(), found[0] + more)


def check_strategy(s: Strategy, facts: ModelFacts, global_batch: int, cluster: Optional[Cluster], field: str = "--strategy",
                   precision: Optional[Precision] = None) -> None:
    """Raise what `plan_problem` finds as an InvalidStrategy (exit code 2)."""
    problem = plan_problem(s, facts, global_batch, precision, cluster)
    if problem is not None:
        raise InvalidStrategy(field, s.to_text(), problem)


def dimensions() -> tuple[Dimension, ...]:
    """Every technique's structure dimensions, in walk order."""
    return tuple(sorted((d for t in TECHNIQUES for d in t.dimensions), key=lambda d: d.order))


def predicates() -> tuple[Predicate, ...]:
    return tuple(p for t in TECHNIQUES for p in t.predicates)
