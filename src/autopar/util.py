"""Small pure helpers every layer shares: run lengths, divisors, a pause of the cyclic GC."""

from __future__ import annotations

import contextlib
import gc
from typing import Callable, Hashable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def run_lengths(values: Iterable[T], same: Callable[[T, T], bool] = lambda a, b: a == b) -> list[tuple[T, int]]:
    """[a, a, b, a] -> [(a, 2), (b, 1), (a, 1)]: consecutive equal values as (value, count)."""
    runs: list[list] = []
    for v in values:
        if runs and same(runs[-1][0], v):
            runs[-1][1] += 1
        else:
            runs.append([v, 1])
    return [(v, n) for v, n in runs]


def divisors(n: int) -> list[int]:
    """Every positive divisor of n, ascending (O(sqrt n))."""
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def first(items: Iterable[T | None]) -> T | None:
    """The first item that is not None (rule composition: the first problem found)."""
    return next((x for x in items if x is not None), None)


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Run the body with Python's cyclic garbage collector off (reference counting still
    frees everything acyclic), then restore it as it was. The planner allocates ~10^5
    short-lived floats, tuples and items per search, which trigger ~150 collections that
    each walk the survivors (the profiled model, imported libraries: ~3e5 objects); they
    cost a quarter of a 175B search (benchmarks/plan_175b.py prints both)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


__all__ = ["run_lengths", "divisors", "first", "cyclic_gc_paused", "Hashable"]
