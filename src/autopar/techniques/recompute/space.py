"""Recomputation in the search: the modes the model allows, least recomputation first."""

from __future__ import annotations

from autopar.spec.enums import Recompute
from autopar.spec.strategy import Strategy
from autopar.techniques.base import RuleInput
from autopar.techniques.recompute.rules import check_recompute


def recomputes(ctx) -> list[Recompute]:
    """Those the model allows (selective needs attention cores, full a `layers` list), least first."""
    r = RuleInput(ctx.facts, ctx.global_batch)
    return [rc for rc in Recompute if check_recompute(Strategy(recompute=rc), r) is None]
