"""What a run measured: records, no text (autopar.cli.report formats them).

Per step: the global mean loss, the step time (the slowest rank's), the peak memory
(the largest rank's: resident set size on CPU, torch.cuda.max_memory_allocated on
GPU) and the throughput (global batch / step time).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.distributed as dist

from autopar.spec.recipe import GPTSpec, LlamaSpec, Recipe, TransformersSpec
from autopar.spec.strategy import Strategy

if TYPE_CHECKING:
    from autopar.runtime.train import Trainer


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@dataclass
class RunResult:
    losses: list[float]
    step_times_s: list[float]
    step_peak_memory_bytes: list[int]
    applied: list[str]
    global_batch: int
    tokens_per_sample: int = 1
    first_step: int = 0  # steps trained before this run (resumed from a checkpoint)
    trainer: Optional["Trainer"] = field(default=None, repr=False)

    @property
    def peak_memory_bytes(self) -> int:
        return max(self.step_peak_memory_bytes, default=0)

    @property
    def samples_per_s(self) -> list[float]:
        return [self.global_batch / t for t in self.step_times_s]

    def to_dict(self) -> dict[str, Any]:
        return {
            "first_step": self.first_step,
            "losses": self.losses,
            "step_times_s": self.step_times_s,
            "peak_memory_bytes": self.peak_memory_bytes,
            "step_peak_memory_bytes": self.step_peak_memory_bytes,
            "samples_per_s": self.samples_per_s,
            "tokens_per_s": [x * self.tokens_per_sample for x in self.samples_per_s],
            "applied": self.applied,
        }


class StepLog:
    """This rank's per-step records; `result` combines every rank's (collective)."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.times: list[float] = []
        self.memory: list[int] = []

    def add(self, loss: torch.Tensor, seconds: float, memory: int) -> None:
        self.losses.append(loss.detach().to(torch.float64).reshape(()))
        self.times.append(seconds)
        self.memory.append(memory)

    def result(self, trainer: "Trainer", s: Strategy, recipe: Recipe, first_step: int = 0) -> RunResult:
        losses = torch.stack(self.losses).cpu() if self.losses else torch.zeros(0, dtype=torch.float64)
        times = torch.tensor(self.times, dtype=torch.float64)
        memory = torch.tensor(self.memory, dtype=torch.float64)
        if dist.is_initialized() and dist.get_world_size() > 1:
            packed = torch.stack([losses, times, memory])  # one gloo/nccl call for the run
            _all_reduce_cpu(packed[0], dist.ReduceOp.SUM)
            _all_reduce_cpu(packed[1:], dist.ReduceOp.MAX)
            losses, times, memory = packed[0], packed[1], packed[2]
        return RunResult(
            losses=losses.tolist(),
            step_times_s=times.tolist(),
            step_peak_memory_bytes=[int(m) for m in memory.tolist()],
            applied=list(trainer.applied),
            global_batch=recipe.training.global_batch,
            tokens_per_sample=tokens_per_sample(recipe),
            first_step=first_step,
            trainer=trainer,
        )


def _all_reduce_cpu(t: torch.Tensor, op) -> None:
    """All-reduce a small CPU tensor, through the device when the backend is NCCL."""
    if dist.get_backend() == "nccl":
        on_device = t.cuda()
        dist.all_reduce(on_device, op=op)
        t.copy_(on_device.cpu())
    else:
        dist.all_reduce(t, op=op)


def tokens_per_sample(recipe: Recipe) -> int:
    model = recipe.model
    if isinstance(model, (GPTSpec, LlamaSpec, TransformersSpec)):
        return model.seq_len
    return 1
