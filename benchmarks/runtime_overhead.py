"""Runtime overhead: `autopar run`'s applied DDP and FSDP plans against hand-written PyTorch.

One torchrun launch of 2 processes. For each plan (dp=2: DDP; dp=2,zero=3: FSDP2 per
block + root) it builds the runtime's trainer (the strategy applied by autopar.runtime)
and a hand-written loop doing the same work (same model, synthetic batches, loss,
optimizer and wrapper arguments), steps them in turn STEPS times (this machine's load
drifts by +-40 %, so both must see the same moments), and prints each one's median step
time (the slowest rank's per step, warm-up steps dropped) and their ratio.
Target: ratio within 3 % of 1.

Run: python benchmarks/runtime_overhead.py   (the default model: GPT 4x128, seq 64, batch 16)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

PLANS = {"ddp": "dp=2", "fsdp": "dp=2,zero=3"}
STEPS, WARMUP = 60, 5
RECIPE = {
    "model": {"family": "gpt", "layers": 4, "hidden": 128, "heads": 4, "seq_len": 64, "vocab": 512},
    "data": {"samples": 8192},
    "training": {"global_batch": 16, "optimizer": "adamw", "precision": "fp32"},
}


class HandWritten:
    """The loop an engineer writes by hand for this plan."""

    def __init__(self, kind: str, recipe):
        import torch
        import torch.distributed as dist
        from torch.distributed.fsdp import fully_shard
        from torch.nn.parallel import DistributedDataParallel as DDP

        from autopar.models import build_model

        self.rank, world = dist.get_rank(), dist.get_world_size()
        self.mdef = build_model(recipe.model, "cpu", torch.float32, recipe.training.seed)
        model = self.mdef.module
        if kind == "ddp":
            model = DDP(model, forward_sync_buffers=False)
        else:
            for block in model.layers:
                fully_shard(block)
            fully_shard(model)
        self.model, self.recipe = model, recipe
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.training.lr)
        self.per = recipe.training.global_batch // world

    def step(self, step: int):
        from autopar.models import synthetic_batch

        (tokens,), target = synthetic_batch(self.mdef, self.recipe.training.global_batch, self.recipe.training.seed * 2**20 + step)
        rows = slice(self.rank * self.per, (self.rank + 1) * self.per)
        loss = self.mdef.loss(self.model(tokens[rows]), target[rows])
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss


def compare(kind: str, text: str, recipe) -> tuple[float, float]:
    """Median step seconds (slowest rank per step) of the runtime and of the hand-written loop,
    stepping both in turn (their order swapped every step) so that load drifts hit both alike."""
    import torch
    import torch.distributed as dist

    from autopar.runtime.mesh import ParallelDims, RankContext
    from autopar.runtime.precision import PrecisionPlan
    from autopar.runtime.report import peak_memory_bytes
    from autopar.runtime.train import make_trainer
    from autopar.spec.strategy import Strategy

    cpu = torch.device("cpu")
    s = Strategy.parse(text)
    ctx = RankContext.create(ParallelDims.from_strategy(s), cpu)
    ours = make_trainer(recipe, s, ctx, PrecisionPlan.of(recipe.training.precision, "cpu", None), STEPS)
    theirs = HandWritten(kind, recipe)
    times = torch.zeros(2, STEPS, dtype=torch.float64)
    for i in range(STEPS):
        for who in ((0, 1) if i % 2 == 0 else (1, 0)):
            start = time.perf_counter()
            if who == 0:
                ours.step(i)
                peak_memory_bytes(cpu)  # what the runtime's loop adds per step
            else:
                theirs.step(i)
            times[who, i] = time.perf_counter() - start
    dist.all_reduce(times, op=dist.ReduceOp.MAX)
    return statistics.median(times[0, WARMUP:].tolist()), statistics.median(times[1, WARMUP:].tolist())


def worker() -> None:
    import torch
    import torch.distributed as dist

    from autopar.cli.worker import finish
    from autopar.spec.recipe import parse_recipe

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    recipe = parse_recipe(RECIPE)
    rows = [(kind, text, *compare(kind, text, recipe)) for kind, text in PLANS.items()]
    if dist.get_rank() == 0:
        print(f"{'plan':<6} {'strategy':<14} {'autopar ms':>10} {'by hand ms':>10} {'ratio':>7}  (median of {STEPS - WARMUP} steps each)")
        for kind, text, ours, theirs in rows:
            print(f"{kind:<6} {text:<14} {ours * 1e3:>10.2f} {theirs * 1e3:>10.2f} {ours / theirs:>7.3f}")
    finish(0)


def main() -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__, "--worker"]
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker()
    else:
        sys.exit(main())
