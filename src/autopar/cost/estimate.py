"""The records of a prediction: what the recipe asks (`Workload`) and what one strategy costs
(`Estimate`, with its time and memory breakdowns), both reloadable from JSON.

autopar.cost.model computes them (`CostModel`, and the one-call `estimate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from autopar.profile.types import ModelProfile
from autopar.spec.enums import Optimizer, Precision
from autopar.spec.recipe import Recipe
from autopar.spec.strategy import Strategy

GB = 1e9
DEFAULT_STORAGE_BPS = 2 * GB  # per node, when the recipe gives no storage_GBps


@dataclass(frozen=True)
class Workload:
    """What the recipe asks, reduced to numbers the cost model uses."""

    global_batch: int
    optimizer: Optimizer
    precision: Precision
    steps: int
    samples: int
    sample_bytes: float
    storage_Bps: float
    tokens_per_sample: Optional[int]

    @classmethod
    def from_recipe(cls, recipe: Recipe, profile: ModelProfile) -> "Workload":
        d = recipe.data
        return cls(
            global_batch=recipe.training.global_batch,
            optimizer=recipe.training.optimizer,
            precision=recipe.training.precision,
            steps=recipe.steps_to_train(),
            samples=d.samples,
            sample_bytes=float(d.sample_bytes or profile.sample_bytes),
            storage_Bps=(d.storage_GBps * GB) if d.storage_GBps else DEFAULT_STORAGE_BPS,
            tokens_per_sample=getattr(recipe.model, "seq_len", None),
        )


@dataclass(frozen=True)
class Estimate:
    strategy: Strategy
    devices_used: int
    fits: bool
    reason: Optional[str]
    step_time_s: float
    time_breakdown_s: dict[str, float]
    memory_per_device_bytes: float
    memory_breakdown_bytes: dict[str, float]
    throughput_samples_s: float
    tokens_per_s: Optional[float]
    tflops_per_device: float
    mfu: float
    steps_factor: float
    time_to_train_s: float
    stages: Optional[tuple[int, ...]]
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy.to_dict(),
            "devices_used": self.devices_used,
            "fits": self.fits,
            "reason": self.reason,
            "predicted": {
                "step_time_s": self.step_time_s,
                "memory_per_device_bytes": self.memory_per_device_bytes,
                "throughput_samples_s": self.throughput_samples_s,
                "tokens_per_s": self.tokens_per_s,
                "tflops_per_device": self.tflops_per_device,
                "mfu": self.mfu,
                "steps_factor": self.steps_factor,
                "time_to_train_s": self.time_to_train_s,
                "stages": list(self.stages) if self.stages else None,
                "breakdown": {"time_s": self.time_breakdown_s, "memory_bytes": self.memory_breakdown_bytes},
            },
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Estimate":
        p = d["predicted"]
        return cls(
            strategy=Strategy.from_dict(d["strategy"]),
            devices_used=int(d["devices_used"]),
            fits=bool(d["fits"]),
            reason=d.get("reason"),
            step_time_s=float(p["step_time_s"]),
            time_breakdown_s={k: float(v) for k, v in p["breakdown"]["time_s"].items()},
            memory_per_device_bytes=float(p["memory_per_device_bytes"]),
            memory_breakdown_bytes={k: float(v) for k, v in p["breakdown"]["memory_bytes"].items()},
            throughput_samples_s=float(p["throughput_samples_s"]),
            tokens_per_s=p.get("tokens_per_s"),
            tflops_per_device=float(p["tflops_per_device"]),
            mfu=float(p["mfu"]),
            steps_factor=float(p["steps_factor"]),
            time_to_train_s=float(p["time_to_train_s"]),
            stages=tuple(p["stages"]) if p.get("stages") else None,
            notes=tuple(d.get("notes", ())),
        )
