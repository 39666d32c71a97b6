"""What a search returns, as records that serialise to JSON and load back (`from_dict`), so
`autopar run --plan FILE.json` replays a saved plan without searching again."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional

from autopar.cost.estimate import Estimate
from autopar.errors import InputError
from autopar.profile.types import ModelProfile
from autopar.spec.cluster import Cluster, cluster_to_yaml_dict, parse_cluster
from autopar.spec.recipe import Recipe
from autopar.spec.strategy import Strategy

FORMAT = "autopar-plan/1"


class Objective(str, Enum):
    TIME = "time"  # time to train: steps x statistical-efficiency factor x step time
    THROUGHPUT = "throughput"  # samples per second, ignoring statistical efficiency
    DEVICES = "devices"  # device-seconds to train (cost)


@dataclass(frozen=True)
class Plan:
    rank: int
    estimate: Estimate
    family: str
    explanation: str

    @property
    def strategy(self) -> Strategy:
        return self.estimate.strategy

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "family": self.family, "explanation": self.explanation, **self.estimate.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        return cls(int(d["rank"]), Estimate.from_dict(d), d["family"], d["explanation"])


@dataclass(frozen=True)
class Rejected:
    family: str
    strategy: Optional[Strategy]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "strategy": self.strategy.to_dict() if self.strategy else None, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Rejected":
        return cls(d["family"], Strategy.from_dict(d["strategy"]) if d.get("strategy") else None, d["reason"])


@dataclass(frozen=True)
class PlanResult:
    plans: tuple[Plan, ...]
    rejected: tuple[Rejected, ...]
    candidates: int
    seconds: float
    pruned: dict[str, int]
    cluster: Cluster
    profile_seconds: float = 0.0
    profile: Optional[ModelProfile] = None  # what was searched over (reused by --why; saved with the plan)
    recipe_key: str = ""  # recipe_fingerprint of the recipe planned

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "recipe": self.recipe_key,
                "plans": [p.to_dict() for p in self.plans], "rejected": [r.to_dict() for r in self.rejected],
                "search": {"candidates": self.candidates, "seconds": self.seconds, "profile_seconds": self.profile_seconds,
                           "pruned": self.pruned},
                "cluster": cluster_to_yaml_dict(self.cluster),
                "profile": self.profile.to_dict() if self.profile else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any], field_path: str = "--plan") -> "PlanResult":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise InputError(field_path, d.get("format") if isinstance(d, dict) else type(d).__name__,
                             f"not a saved plan (expected \"format\": \"{FORMAT}\"); write one with autopar plan RECIPE --json > FILE")
        search = d["search"]
        return cls(tuple(Plan.from_dict(p) for p in d["plans"]), tuple(Rejected.from_dict(r) for r in d["rejected"]),
                   int(search["candidates"]), float(search["seconds"]), dict(search["pruned"]),
                   parse_cluster(d["cluster"], field_path=f"{field_path}.cluster"), float(search.get("profile_seconds", 0.0)),
                   ModelProfile.from_dict(d["profile"]) if d.get("profile") else None, d.get("recipe", ""))


def recipe_fingerprint(recipe: Recipe) -> str:
    """A short hash of what a plan depends on in a recipe: model, data, training."""
    raw = recipe.model_dump(mode="json", include={"model", "data", "training"})
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]


def score(e: Estimate, objective: Objective) -> float:
    if objective is Objective.THROUGHPUT:
        return e.step_time_s
    if objective is Objective.DEVICES:
        return e.time_to_train_s * e.devices_used
    return e.time_to_train_s


def rank_key(e: Estimate, objective: Objective) -> tuple:
    """Fitting plans first; then the objective; ties to less memory, then fewer devices."""
    return (not e.fits, round(score(e, objective), 9), e.memory_per_device_bytes, e.devices_used)
