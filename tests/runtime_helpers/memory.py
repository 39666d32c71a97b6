"""Run under torchrun: the memory a rank gains while its model is built, parallelized and
initialised, and while it trains one step (peak resident set growth; Linux only).

    torchrun --standalone --nproc-per-node N -m tests.runtime_helpers.memory CASE.json OUT.json

CASE.json: {"recipe": {...}, "strategies": ["dp=2,zero=3", ...]}, trained in float32.
OUT.json (rank 0): one record per strategy with a list over ranks of
  full_bytes   the whole model's parameters (tied weights once)
  shard_bytes  the parameters this rank holds after parallelization (its local tensors)
  init_bytes   peak RSS growth from before the model is built to the end of parallelize()
  step_bytes   peak RSS growth from the same start to the end of one training step
and the step's loss (to show it trained). The peak (VmHWM) is reset before each strategy
by writing 5 to /proc/self/clear_refs; run with MALLOC_MMAP_THRESHOLD_ set so freed
tensors go back to the system and strategies do not inherit each other's heap.
"""

from __future__ import annotations

import gc
import json
import re
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from autopar.models import build_model
from autopar.runtime.materialize import local_box
from autopar.runtime.mesh import ParallelDims, RankContext
from autopar.runtime.parallelize import applied_modules
from autopar.runtime.precision import PrecisionPlan
from autopar.runtime.train import make_trainer, with_stages
from autopar.spec.recipe import Recipe, parse_recipe
from autopar.spec.strategy import Strategy
from tests.runtime_helpers.equivalence import CPU, TIMEOUT_S, record_failure, write_and_finish


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE).group(1)) * 1024


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS (Linux >= 4.0)


def measure(recipe: Recipe, text: str) -> dict:
    s = with_stages(recipe, Strategy.parse(text), None)  # the cost model's layout, as autopar run writes it in
    applied_modules(s)  # code is imported before the peak is reset (the techniques', and what torch loads lazily
    build_model(recipe.model, "meta")  # on a first meta build, torch._dynamo: ~27 MiB): only the model counts
    ctx = RankContext.create(ParallelDims.from_strategy(s), CPU)
    precision = PrecisionPlan.of(recipe.training.precision, "cpu", torch.float32)
    gc.collect()
    dist.barrier()
    reset_peak()
    start = _status_bytes("VmRSS")
    trainer = make_trainer(recipe, s, ctx, precision, steps=1)
    init = _status_bytes("VmHWM") - start
    loss = trainer.step(0)
    step = _status_bytes("VmHWM") - start
    params = {id(p): p for c in trainer.par.chunks for p in c.module.parameters()}.values()
    shard = sum(local_box(p)[0].numel() * p.element_size() for p in params)
    full = sum(p.numel() * 4 for p in build_model(recipe.model, "meta").module.parameters())
    mine = {"full_bytes": full, "shard_bytes": shard, "init_bytes": init, "step_bytes": step, "loss": loss.item(), "applied": trainer.applied}
    del trainer, params
    gc.collect()
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return {"strategy": text, "ranks": gathered}


def main(case_path: str, out_path: str) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=TIMEOUT_S))
    torch.set_num_threads(1)
    records: list[dict] = []
    try:
        case = json.load(open(case_path))
        recipe = parse_recipe(case["recipe"])
        for text in case["strategies"]:
            records.append({"strategy": text})
            records[-1].update(measure(recipe, text))
    except Exception as err:  # noqa: BLE001 - record it and stop: the ranks may be out of step
        records = record_failure(records, err, {"strategy": "<setup>"})
    write_and_finish(records, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
