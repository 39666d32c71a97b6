"""The cost model's door to autopar.validity: the shared rules, read from a profile.

`CostModel.estimate` (via `check_strategy`) and the published-run validation call these;
the rules themselves, and which of them the cost model adds to the runtime's, live in
autopar/validity.py.
"""

from __future__ import annotations

from typing import Optional

from autopar.errors import InputError
from autopar.profile.types import ModelProfile
from autopar.spec.cluster import Cluster
from autopar.spec.enums import Precision
from autopar.spec.strategy import Strategy
from autopar.validity import ModelFacts, facts_from_profile, plan_problem


class InvalidStrategy(InputError):
    """A strategy that cannot run (as opposed to one that does not fit in memory)."""


def strategy_problem(s: Strategy, profile: ModelProfile, global_batch: int, cluster: Optional[Cluster],
                     precision: Optional[Precision] = None, facts: Optional[ModelFacts] = None) -> Optional[str]:
    """The first reason `s` is invalid, or None (precision None: fp16's limits are not checked).
    Pass `facts` (facts_from_profile(profile)) when checking many strategies of one model."""
    return plan_problem(s, facts or facts_from_profile(profile), global_batch, precision, cluster)


def check_strategy(s: Strategy, profile: ModelProfile, global_batch: int, cluster: Optional[Cluster], field: str = "--strategy",
                   precision: Optional[Precision] = None, facts: Optional[ModelFacts] = None) -> None:
    problem = strategy_problem(s, profile, global_batch, cluster, precision, facts)
    if problem is not None:
        raise InvalidStrategy(field, s.to_text(), problem)
