"""Run under torchrun: save a checkpoint under one strategy, resume it under another, and
compare the whole run with single-process training (computed here in plain PyTorch).

    torchrun --standalone --nproc-per-node N -m tests.runtime_helpers.resume CASES.json OUT.json WORKDIR

CASES.json: [{"name": "gpt", "recipe": {...}, "steps": 4, "save_at": 2,
              "pairs": [["dp=2,zero=3", "tp=2"], ...]}, ...]
Each pair trains `save_at` steps under the first strategy with --checkpoint WORKDIR/pair-<n>,
then resumes to `steps` under the second. A pair of one strategy also trains it
uninterrupted, in these processes, for the same-strategy comparison.
OUT.json (rank 0): one record per pair: both parts' losses, the reference's, the largest
loss and parameter differences against the reference and against the uninterrupted run,
the step the second part started at, which parameter names are missing, and the
checkpoint directory (its last step saved by the second strategy).
A pair that raises is recorded with its error and ends the run.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from autopar.runtime.checkpoint import CheckpointOptions
from autopar.runtime.train import RunOptions, train
from autopar.spec.recipe import parse_recipe
from autopar.spec.strategy import Strategy
from tests.runtime_helpers.equivalence import CPU, DTYPE, TIMEOUT_S, record_failure, reference, write_and_finish


def _run(recipe, text: str, steps: int, checkpoint: CheckpointOptions | None = None):
    result = train(recipe, Strategy.parse(text), RunOptions(steps=steps, dtype=DTYPE, checkpoint=checkpoint), CPU)
    return result, result.trainer.full_parameters()


def _largest_diff(params: dict[str, torch.Tensor], want: dict[str, torch.Tensor], owned: set[str]) -> tuple[float, list[str]]:
    """Over every rank: the largest |difference| from `want`, and the `owned` names no rank holds."""
    local = max(((p - want[n]).abs().max().item() for n, p in params.items() if n in want), default=0.0)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (local, sorted(params)))
    held = set().union(*(set(g[1]) for g in gathered))
    return max(g[0] for g in gathered), sorted(owned - held)


def resume_pair(recipe, case: dict, pair: list[str], where: Path, ref) -> dict:
    ref_losses, ref_params, owned = ref
    before, after = pair
    steps, save_at = case["steps"], case["save_at"]
    first, _ = _run(recipe, before, save_at, CheckpointOptions(str(where)))
    second, params = _run(recipe, after, steps, CheckpointOptions(str(where)))
    losses = first.losses + second.losses
    param_diff, missing = _largest_diff(params, ref_params, owned)
    record = {
        "pair": pair, "losses": losses, "reference_losses": ref_losses, "first_step": second.first_step,
        "applied": second.applied, "missing": missing, "checkpoint": str(where),
        "loss_diff": max(abs(a - b) for a, b in zip(losses, ref_losses, strict=True)), "param_diff": param_diff,
    }
    if before == after:
        whole, whole_params = _run(recipe, before, steps)
        record["uninterrupted_loss_diff"] = max(abs(a - b) for a, b in zip(losses, whole.losses, strict=True))
        record["uninterrupted_param_diff"] = _largest_diff(params, whole_params, owned)[0]
    return record


def main(cases_path: str, out_path: str, workdir: str) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=TIMEOUT_S))
    torch.set_num_threads(1)
    records: list[dict] = []
    try:
        for case in json.load(open(cases_path)):
            recipe = parse_recipe(case["recipe"])
            ref = reference(recipe, case["steps"])
            for pair in case["pairs"]:
                records.append({"case": case["name"], "pair": pair})
                records[-1].update(resume_pair(recipe, case, pair, Path(workdir) / f"pair-{len(records)}", ref))
    except (Exception, CheckpointException) as err:  # noqa: BLE001 - record it and stop: the ranks may be out of step
        # (DCP raises CheckpointException, a BaseException)
        records = record_failure(records, err, {"case": None, "pair": ["<setup>"]})
    write_and_finish(records, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
