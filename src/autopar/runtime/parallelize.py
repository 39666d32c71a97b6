"""Apply a strategy to a built model: each active technique in the fixed order of
autopar.techniques.TECHNIQUES (torchtitan's), then the optimizer, then each `finish`.

  pipeline   cut the blocks into this rank's stage chunks               techniques/pipeline/apply.py
  tensor     DTensor parallelize_module (+ sequence parallel)            techniques/tensor/apply.py
  features   the input Linear's columns split over dp                    techniques/features/apply.py
  recompute  checkpoint_wrapper on attention cores or blocks             techniques/recompute/apply.py
  data       FSDP2 fully_shard, then materialization, then DDP / ZeRO-1  techniques/data/apply.py
  local_sgd  a parameter-averaging hook after the optimizer step         techniques/local_sgd/apply.py
  (optimizer: the recipe's, unless a technique set one, e.g. ZeRO-1's ZeroRedundancyOptimizer)
  pipeline.finish  PipelineStage per chunk + the schedule, over the wrapped chunks

A model built on the meta device (the built-in families) is allocated and initialised
between the sharding techniques and DDP (`Parallelized.materialize`), each rank drawing
only what the sharding left it. Subnetwork training and Hogwild replace the training
loop itself (their apply modules' `make_trainer` / `run`, used by runtime/train.py).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from autopar.models import ModelDef
from autopar.profile.facts import ModelFacts
from autopar.runtime.mesh import RankContext
from autopar.runtime.optim import build_optimizer
from autopar.runtime.parallelized import Parallelized
from autopar.runtime.precision import PrecisionPlan
from autopar.spec.recipe import TrainingSpec
from autopar.spec.strategy import Strategy
from autopar.techniques import TECHNIQUES


def applied_modules(s: Strategy) -> list[ModuleType]:
    """The runtime modules of the techniques `s` uses, in application order."""
    return [importlib.import_module(t.apply) for t in TECHNIQUES if t.active(s)]


def parallelize(mdef: ModelDef, facts: ModelFacts, s: Strategy, ctx: RankContext, training: TrainingSpec,
                precision: PrecisionPlan, steps: int) -> Parallelized:
    """`mdef.module` may be on the meta device (then it must have an `init` scheme): it is
    parallelized there and materialized with this rank's shards only."""
    par = Parallelized.start(mdef, facts, s, ctx, training, precision, steps)
    modules = applied_modules(s)
    for module in modules:
        if hasattr(module, "apply"):
            module.apply(par)
    par.materialize()
    if par.optimizer is None:
        par.optimizer = build_optimizer(par.parameters, training)
    for module in modules:
        if hasattr(module, "finish"):
            module.finish(par)
    return par
