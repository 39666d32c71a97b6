"""What a search holds while it runs (plan/planner.py): the plans priced so far, the
thresholds they set, each family's best, leanest and bound for the explanations, and
the memos its floors read."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from autopar.cost.estimate import Estimate
from autopar.cost.model import CostModel
from autopar.plan.families import family_of
from autopar.plan.result import Objective, rank_key, score
from autopar.plan.space import SearchContext
from autopar.spec.strategy import Strategy
from autopar.techniques import plan_problem
from autopar.techniques.data.space import Sharding


@dataclass
class Search:
    model: CostModel
    ctx: SearchContext
    objective: Objective
    top_k: int
    fixed: dict[str, Any]
    best: list[Estimate] = field(default_factory=list)
    family_best: dict[str, Estimate] = field(default_factory=dict)
    family_smallest: dict[str, Estimate] = field(default_factory=dict)
    candidates: int = 0
    pruned: dict[str, int] = field(default_factory=dict)
    family_bound: dict[str, float] = field(default_factory=dict)  # least lower bound of pruned structures (score)
    family_problem: dict[str, str] = field(default_factory=dict)  # why a family's structures cannot run at all
    seen: dict[Strategy, Optional[Estimate]] = field(default_factory=dict)
    lean: dict[str, tuple[float, Strategy]] = field(default_factory=dict)  # per family, the least memory floor the memory floor removed
    _families: dict[tuple, str] = field(default_factory=dict)
    _by_structure: dict[tuple[int, Sharding], tuple[dict, str]] = field(default_factory=dict)
    _thresholds: dict[str, float] = field(default_factory=dict)
    heap: list[tuple[float, int, Any]] = field(default_factory=list)  # least floor first: good plans early lower the thresholds
    ties: Any = field(default_factory=itertools.count)

    def note_bound(self, fam: str, floor: float) -> None:
        """A setting of `fam` the step-time floor removed: the least such floor is the family's
        'even at peak speed it would need X per step' in why-not."""
        if floor < self.family_bound.get(fam, float("inf")):
            self.family_bound[fam] = floor

    def note_lean(self, fam: str, floor_bytes: float, setting: Callable[[], Strategy]) -> None:
        """Remember a setting (built only if kept) the memory floor removed: for a family with
        no other candidate it is priced at the end, so 'needs X GB per device even at its
        leanest' has its numbers."""
        if fam not in self.family_smallest and (fam not in self.lean or floor_bytes < self.lean[fam][0]):
            self.lean[fam] = (floor_bytes, setting())

    def family(self, c: dict, zero: Sharding) -> str:
        """The family of a structure's settings with one sharding, memoised per structure (by
        its dict's id, the dict kept in the memo so that the id is never reused) and by the
        values it reads (structures that differ only in devices share one)."""
        found = self._by_structure.get((id(c), zero))
        if found is None:
            key = (c["dp"], c["tp"], c["pp"], c["sync"], c["data_partition"], c["subnet"], c["threads"], c.get("ep", 1), c.get("cp", 1), zero)
            if key not in self._families:
                self._families[key] = family_of(Strategy(dp=c["dp"], tp=c["tp"], pp=c["pp"], **zero.fields(), sync=c["sync"],
                                                         data_partition=c["data_partition"], subnet=c["subnet"], threads=c["threads"],
                                                         ep=c.get("ep", 1), cp=c.get("cp", 1)))
            found = self._by_structure[(id(c), zero)] = (c, self._families[key])
        return found[1]

    def consider(self, s: Strategy) -> Optional[Estimate]:
        if not self.matches_fixed(s):
            return None
        if s in self.seen:  # the leanest-fit check and the knob loop may both price one strategy
            return self.seen[s]
        e = self._price(s)
        self.seen[s] = e
        return e

    def _price(self, s: Strategy) -> Optional[Estimate]:
        problem = plan_problem(s, self.ctx.facts, self.ctx.global_batch, self.ctx.precision, self.ctx.cluster)
        if problem is not None:
            self.pruned["invalid"] = self.pruned.get("invalid", 0) + 1
            self.family_problem.setdefault(family_of(s), f"{s.to_text()}: {problem}")  # why-not, if nothing of it runs
            return None
        e = self.model.estimate(s, check=False)
        self.candidates += 1
        self._thresholds.clear()
        fam = family_of(s)
        key = rank_key(e, self.objective)
        if fam not in self.family_best or key < rank_key(self.family_best[fam], self.objective):
            self.family_best[fam] = e
        if fam not in self.family_smallest or e.memory_per_device_bytes < self.family_smallest[fam].memory_per_device_bytes:
            self.family_smallest[fam] = e
        if e.fits:
            self.best.append(e)
            self.best.sort(key=lambda x: rank_key(x, self.objective))
            del self.best[self.top_k * 4:]
        return e

    def matches_fixed(self, s: Strategy) -> bool:
        """Whether `s` has every --fix value; a micro-batch equal to the per-replica batch
        is the same strategy whether spelled microbatch=B or left out (None)."""
        for k, v in self.fixed.items():
            if k == "microbatch":
                local = s.local_batch(self.ctx.global_batch)
                if s.microbatch_size(self.ctx.global_batch) != (v if v is not None else local):
                    return False
            elif getattr(s, k) != v:
                return False
        return True

    def pinned(self, key: str, values: Sequence) -> list:
        """A search dimension's values, or only the --fix value of it (searched even where
        the grid has no such value: a neutral one, gpipe, virtual_stages=3)."""
        return [self.fixed[key]] if key in self.fixed else list(values)

    def threshold(self, family: str) -> float:
        """max(K-th best score, the family's best score)."""
        kth = score(self.best[self.top_k - 1], self.objective) if len(self.best) >= self.top_k else float("inf")
        fam = self.family_best.get(family)
        fam_score = score(fam, self.objective) if fam is not None and fam.fits else float("inf")
        return max(kth, fam_score)

    def limit(self, fam: str) -> float:
        """The floor above which a setting of `fam` can neither enter the ranking (the K-th
        best) nor be the family's best (ties are kept: rank_key rounds to 1e-9); memoised
        until the next pricing."""
        found = self._thresholds.get(fam)
        if found is None:
            found = self._thresholds[fam] = self.threshold(fam) * (1 + 1e-12) + 1e-9
        return found
