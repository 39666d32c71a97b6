"""Run under torchrun: train each case's strategies with the runtime and compare every one
with single-process training of the same recipe, computed here in plain PyTorch.

    torchrun --standalone --nproc-per-node N -m tests.runtime_helpers.equivalence CASES.json OUT.json

CASES.json: [{"name": "gpt", "recipe": {...}, "steps": 3, "strategies": ["dp=2", ...], "mixed": false}, ...]
("mixed": true trains in the recipe's precision; the reference is always float64)
OUT.json (rank 0): one record per strategy: the runtime's losses, the reference's, the
largest loss and parameter differences, parameter names missing or unexpected, and
both final models' loss on the next, untrained batch (rank 0's view).
A strategy that raises is recorded with its error and ends the run (the ranks may be
out of step after it).
"""

from __future__ import annotations

import json
import sys
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

from autopar.cli.worker import finish
from autopar.models import build_model
from autopar.runtime.data import BatchSource
from autopar.runtime.optim import build_optimizer
from autopar.runtime.train import RunOptions, train
from autopar.spec.recipe import Recipe, parse_recipe
from autopar.spec.strategy import Strategy

CPU = torch.device("cpu")
DTYPE = torch.float64
TIMEOUT_S = 120  # a collective that waits longer means a rank failed


def reference(recipe: Recipe, steps: int) -> tuple[list[float], dict[str, torch.Tensor], set[str]]:
    """Single-process training on the whole global batch: losses, parameters, owned names."""
    mdef = build_model(recipe.model, CPU, DTYPE, recipe.training.seed)
    model = mdef.module
    source = BatchSource(mdef, recipe, CPU, DTYPE)
    optimizer = build_optimizer(model.parameters(), recipe.training)
    losses = []
    for step in range(steps):
        inputs, target = source.rows(step, 0, recipe.training.global_batch)
        loss = mdef.loss(model(*inputs), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    params = {n: p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}
    return losses, params, {n for n, _ in model.named_parameters()}


def eval_loss(recipe: Recipe, params: dict[str, torch.Tensor], step: int) -> float | None:
    """Loss of a model with these parameters on step `step`'s batch (one not trained on);
    None when this rank does not hold every parameter (pipeline stages)."""
    mdef = build_model(recipe.model, CPU, DTYPE, recipe.training.seed)
    with torch.no_grad():
        for name, p in mdef.module.named_parameters():
            if name not in params:
                return None
            p.copy_(params[name])
        inputs, target = BatchSource(mdef, recipe, CPU, DTYPE).rows(step, 0, recipe.training.global_batch)
        return mdef.loss(mdef.module(*inputs), target).item()


def compare(recipe: Recipe, text: str, steps: int, ref, mixed: bool = False) -> dict:
    """`mixed`: train in the recipe's precision (bf16/fp16 mixed) instead of float64."""
    ref_losses, ref_params, owned = ref
    result = train(recipe, Strategy.parse(text), RunOptions(steps=steps, dtype=None if mixed else DTYPE), CPU)
    params = result.trainer.full_parameters()
    diffs = [(p.to(DTYPE) - ref_params[n]).abs().max().item() for n, p in params.items() if n in ref_params]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (max(diffs, default=0.0), sorted(params)))
    names = set().union(*(set(g[1]) for g in gathered))
    return {
        "strategy": text,
        "applied": result.applied,
        "losses": result.losses,
        "reference_losses": ref_losses,
        "loss_diff": max(abs(a - b) for a, b in zip(result.losses, ref_losses)),
        "param_diff": max(g[0] for g in gathered),
        "missing": sorted(owned - names),
        "unexpected": sorted(names - set(ref_params)),
        "peak_memory_bytes": result.peak_memory_bytes,
        "eval_loss": eval_loss(recipe, params, steps),
        "reference_eval_loss": eval_loss(recipe, ref_params, steps),
    }


def main(cases_path: str, out_path: str) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=TIMEOUT_S))
    torch.set_num_threads(1)
    records: list[dict] = []
    try:
        for case in json.load(open(cases_path)):
            recipe, steps = parse_recipe(case["recipe"]), case.get("steps", 3)
            ref = reference(recipe, steps)
            for text in case["strategies"]:
                records.append({"case": case.get("name"), "strategy": text})
                records[-1].update(compare(recipe, text, steps, ref, case.get("mixed", False)))
    except Exception as err:  # noqa: BLE001 - record it and stop: the ranks may be out of step
        records = record_failure(records, err, {"case": None, "strategy": "<setup>"})
    write_and_finish(records, out_path)


def record_failure(records: list, err: BaseException, setup: dict) -> list:
    """Print the traceback and attach the error to the last record (or a setup record)."""
    traceback.print_exc()
    records = records or [setup]
    records[-1]["error"] = f"{type(err).__name__}: {err}"
    return records


def write_and_finish(records: list, out_path: str) -> None:
    """Rank 0 writes the records; every rank ends cleanly (gloo exit workaround)."""
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(records, f, indent=1)
    finish(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
