"""Shared-memory parallelism: `threads` workers on one node's cores sharing one model.

  sync=sync   intra-op parallelism: each process runs its kernels on `threads` threads
              (torch.set_num_threads; torchrun gets OMP_NUM_THREADS=threads too).
  sync=async  Hogwild (Niu et al. 2011): the model's parameters are put in shared memory
              (`share_memory()`) and `threads` processes (torch.multiprocessing, fork)
              train on them without locks, each on its 1/threads share of every global
              batch with its own optimizer, each applying its updates as soon as they
              are computed. One Hogwild "step" is one global batch across the workers;
              its loss is the workers' mean, its time the slowest worker's.
Hogwild runs on CPU in one torchrun process (dp = tp = pp = 1).
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import time
import traceback
from typing import Optional

import torch

from autopar.models import ModelDef, build_model
from autopar.runtime.data import BatchSource
from autopar.runtime.names import clean_name
from autopar.runtime.optim import build_optimizer
from autopar.runtime.precision import PrecisionPlan
from autopar.runtime.report import RunResult, peak_memory_bytes, tokens_per_sample
from autopar.spec.enums import Recompute
from autopar.spec.recipe import Recipe
from autopar.spec.strategy import Strategy
from autopar.techniques.recompute.apply import apply_activation_checkpointing

CPU = torch.device("cpu")


def run(recipe: Recipe, s: Strategy, options, device: torch.device) -> Optional[RunResult]:
    """Hogwild replaces the training loop (its result); intra-op threads only set the thread
    count of this process (None: the standard loop runs)."""
    if is_hogwild(s):
        return run_hogwild(recipe, s, options)
    apply_threads(s.threads)
    return None


def is_hogwild(s: Strategy) -> bool:
    return s.is_async and s.threads > 1


def apply_threads(threads: int) -> None:
    torch.set_num_threads(threads)


class HogwildModel:
    """The shared model after a Hogwild run (the Trainer interface for full_parameters)."""

    def __init__(self, module: torch.nn.Module, applied: list[str]):
        self.module, self.applied = module, applied

    def full_parameters(self) -> dict[str, torch.Tensor]:
        return {clean_name(name): p.detach() for name, p in self.module.named_parameters()}


def run_hogwild(recipe: Recipe, s: Strategy, options) -> RunResult:
    torch.set_num_threads(1)  # before any kernel: a forked child must not inherit a busy OpenMP pool
    precision = PrecisionPlan.of(recipe.training.precision, "cpu", options.dtype)
    mdef = build_model(recipe.model, CPU, precision.param_dtype, recipe.training.seed)
    apply_activation_checkpointing(mdef.module, s.recompute)
    mdef.module.share_memory()
    losses = torch.zeros(s.threads, options.steps, dtype=torch.float64).share_memory_()
    times = torch.zeros_like(losses).share_memory_()
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_worker, args=(w, s.threads, mdef, recipe, precision, options.steps, losses, times)) for w in range(s.threads)]
    for p in workers:
        p.start()
    for p in workers:
        p.join()
    failed = [p.exitcode for p in workers if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} Hogwild worker(s) failed (exit codes {failed})")
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    memory = max(peak_memory_bytes(CPU), children)
    applied = [f"hogwild(threads={s.threads}, shared-memory parameters, lock-free updates)"]
    applied += [f"recompute({s.recompute.value})"] if s.recompute is not Recompute.NONE else []
    return RunResult(
        losses=losses.mean(0).tolist(),
        step_times_s=times.max(0).values.tolist(),
        step_peak_memory_bytes=[memory] * options.steps,
        applied=applied,
        global_batch=recipe.training.global_batch,
        tokens_per_sample=tokens_per_sample(recipe),
        trainer=HogwildModel(mdef.module, applied),
    )


def _worker(w: int, k: int, mdef: ModelDef, recipe: Recipe, precision: PrecisionPlan, steps: int, losses, times) -> None:
    """One Hogwild worker: train the shared parameters on share w of k of every batch."""
    try:
        torch.manual_seed(recipe.training.seed * 1000 + w)
        source = BatchSource(mdef, recipe, CPU, precision.param_dtype)
        optimizer = build_optimizer(mdef.module.parameters(), recipe.training)
        for step in range(steps):
            start = time.perf_counter()
            inputs, target = source.replica_rows(step, w, k)
            with precision.autocast(False):
                loss = mdef.loss(mdef.module(*inputs), target)
            loss.backward()
            optimizer.step()  # writes straight into the shared parameters, no lock
            optimizer.zero_grad(set_to_none=True)
            losses[w, step] = loss.item()
            times[w, step] = time.perf_counter() - start
    except BaseException:  # noqa: BLE001 - report and fail this worker; the parent raises

        traceback.print_exc()
        os._exit(1)
