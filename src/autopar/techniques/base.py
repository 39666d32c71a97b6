"""The interface every parallelism technique implements, and the inputs its rules read.

A technique is one folder, `techniques/<name>/`:
  __init__.py  TECHNIQUE: its name, the Strategy fields it owns, its rules, its search
               dimensions, and the module that applies it at run time;
  rules.py     pure checks: the problem as text with the failing arithmetic, or None;
  space.py     its search dimensions (values given the choices made so far) and the
               named predicates that prune them;
  cost.py      its cost terms: pure functions with units in their names;
  apply.py     its runtime application with PyTorch's own API. Only the runtime imports
               it (by the name in `apply`): planning never loads torch.distributed's
               parallel APIs.

autopar/techniques/__init__.py lists the techniques in the order the runtime applies
them (torchtitan's: pipeline -> tensor/sequence -> recompute -> data/sharded, then the
techniques that change the loop) and composes their rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from autopar.profile.facts import ModelFacts
from autopar.spec.enums import Precision
from autopar.spec.strategy import Strategy

Partial = dict[str, Any]  # a candidate under construction: Strategy field (or "devices") -> value


@dataclass(frozen=True)
class RuleInput:
    """What a rule reads besides the strategy."""

    facts: ModelFacts
    global_batch: int
    precision: Optional[Precision] = None  # None: the cost model alone (published runs); fp16's limits not checked


Rule = Callable[[Strategy, RuleInput], Optional[str]]


@dataclass(frozen=True)
class Dimension:
    """One search dimension: the values of Strategy field `name` given the choices so far."""

    name: str
    values: Callable[[Any, Partial], Iterable[Any]]  # (SearchContext, partial) -> values
    order: int  # position in the walk (smaller first): a dimension may read those before it


@dataclass(frozen=True)
class Predicate:
    """A named pruning of partial candidates, applied once every field it reads is bound."""

    name: str
    reads: tuple[str, ...]
    ok: Callable[[Any, Partial], bool]


_NEUTRAL = Strategy()


@dataclass(frozen=True)
class Technique:
    name: str
    fields: tuple[str, ...]  # the Strategy fields it owns
    rules: tuple[Rule, ...]  # what the runtime can run; anything else is refused before launch
    priced: tuple[Rule, ...] = ()  # what the cost model prices; estimate and plan refuse the rest
    dimensions: tuple[Dimension, ...] = ()  # its structure dimensions in the search space
    predicates: tuple[Predicate, ...] = ()
    apply: str = ""  # module of its runtime application, imported by the runtime only
    fp16_ok: Callable[[Strategy], bool] = lambda s: True  # whether its runtime applies fp16 loss scaling to s
    needed_by: Callable[[Strategy], bool] = lambda s: False  # another technique needs it with its own fields neutral

    def active(self, s: Strategy) -> bool:
        """Whether `s` uses this technique (some field it owns is not neutral, or another needs it)."""
        return any(getattr(s, f) != getattr(_NEUTRAL, f) for f in self.fields) or self.needed_by(s)

