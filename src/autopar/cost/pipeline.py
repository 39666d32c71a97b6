"""Pipeline parallelism: stage layout and schedule time.

Stage layout: cut L layers into S contiguous stages, minimising the slowest stage's
time, with each stage's memory under a cap (uneven layer counts allowed). Two
solvers agree: `layout_dp`, the reference dynamic program, and `layout_fast`,
bisection on the answer with a greedy feasibility test (exact up to the bisection
tolerance; greedy is optimal for the test since a shorter suffix is never harder).

Schedule time for m micro-batches over p stages (Narayanan et al. 2021, Sec. 2.2):
GPipe and 1F1B both take (m - 1) t_max + sum_i t_i, a bubble of (p - 1) t for
balanced stages, i.e. (p - 1)/m of the ideal m t. Interleaving v chunks per rank
divides the bubble by v.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Callable, Optional, Sequence

MemFn = Callable[[int, int, int], float]  # (stage index, first layer, end layer) -> bytes


def _prefix(values: Sequence[float]) -> list[float]:
    out = [0.0]
    for v in values:
        out.append(out[-1] + v)
    return out


def layout_dp(times: Sequence[float], stages: int, mem: Optional[MemFn] = None, cap: float = math.inf) -> Optional[tuple[int, ...]]:
    """Reference solver, O(S L^2). best[i][j]: the smallest possible slowest-stage time
    when the first j layers fill the first i stages; choice[i][j] the first layer of
    stage i-1 in that optimum. Returns layers per stage, or None if nothing fits."""
    L = len(times)
    if stages > L:
        return None
    pre = _prefix(times)
    inf = math.inf
    best = [[inf] * (L + 1) for _ in range(stages + 1)]
    choice = [[0] * (L + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for i in range(1, stages + 1):
        for j in range(i, L - (stages - i) + 1):
            for k in range(i - 1, j):
                if best[i - 1][k] == inf or (mem is not None and mem(i - 1, k, j) > cap):
                    continue
                value = max(best[i - 1][k], pre[j] - pre[k])
                if value < best[i][j]:
                    best[i][j], choice[i][j] = value, k
    if best[stages][L] == inf:
        return None
    counts, j = [], L
    for i in range(stages, 0, -1):
        k = choice[i][j]
        counts.append(j - k)
        j = k
    return tuple(reversed(counts))


def _greedy(pre: list[float], stages: int, limit: float, mem: Optional[MemFn], cap: float) -> Optional[tuple[int, ...]]:
    L = len(pre) - 1
    counts, start = [], 0
    for i in range(stages):
        last_end = L - (stages - i - 1)  # leave one layer for each later stage
        end = start + 1
        if pre[end] - pre[start] > limit or (mem is not None and mem(i, start, end) > cap):
            return None
        while end < last_end and pre[end + 1] - pre[start] <= limit and (mem is None or mem(i, start, end + 1) <= cap):
            end += 1
        if i == stages - 1 and end != L:
            return None
        counts.append(end - start)
        start = end
    return tuple(counts)


def layout_fast(times: Sequence[float], stages: int, mem: Optional[MemFn] = None, cap: float = math.inf, rel_tol: float = 1e-12) -> Optional[tuple[int, ...]]:
    """Bisection on the slowest-stage time with a greedy feasibility test."""
    L = len(times)
    if stages > L:
        return None
    pre = _prefix(times)
    lo, hi = max(times) if times else 0.0, pre[-1]
    best = _greedy(pre, stages, hi, mem, cap)
    if best is None:
        return None
    while hi - lo > rel_tol * max(hi, 1e-300):
        mid = (lo + hi) / 2
        found = _greedy(pre, stages, mid, mem, cap)
        if found is None:
            lo = mid
        else:
            hi, best = mid, found
    return best


def layout_brute_force(times: Sequence[float], stages: int, mem: Optional[MemFn] = None, cap: float = math.inf) -> Optional[float]:
    """Oracle for tests: the optimal slowest-stage time over all cuts."""
    L = len(times)
    pre = _prefix(times)
    best = None
    for cuts in combinations(range(1, L), stages - 1):
        bounds = (0, *cuts, L)
        if mem is not None and any(mem(i, bounds[i], bounds[i + 1]) > cap for i in range(stages)):
            continue
        value = max(pre[bounds[i + 1]] - pre[bounds[i]] for i in range(stages))
        best = value if best is None else min(best, value)
    return best


def layout_runs(runs: Sequence[tuple[float, int]], stages: int, rel_tol: float = 1e-5) -> Optional[tuple[int, ...]]:
    """Time-only layout for layers given as runs of identical (time, count): the greedy
    takes whole blocks of a run at once, so a test costs O(stages + runs), not O(L).
    Same optimum as layout_fast (to rel_tol) when no memory cap applies."""
    L = sum(n for _, n in runs)
    if stages > L:
        return None
    total = sum(t * n for t, n in runs)
    biggest = max(t for t, _ in runs)
    lo = max(biggest, total / stages)
    hi = min(total, total / stages + biggest) * (1 + 1e-12)  # greedy always succeeds at average + largest
    best = _greedy_runs(runs, L, stages, hi)
    while best is not None and hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2
        found = _greedy_runs(runs, L, stages, mid)
        if found is None:
            lo = mid
        else:
            hi, best = mid, found
    return best


def _greedy_runs(runs: Sequence[tuple[float, int]], L: int, stages: int, limit: float) -> Optional[tuple[int, ...]]:
    counts: list[int] = []
    r, used_in_run, taken = 0, 0, 0  # current run, layers of it already placed, layers placed
    for i in range(stages):
        room, size = limit, 0
        last = L - taken - (stages - i - 1)  # layers this stage may take at most
        while r < len(runs) and size < last:
            t, n = runs[r]
            avail = min(n - used_in_run, last - size)
            k = avail if t <= 0 else min(avail, int(room / t * (1 + 1e-12)))
            if k <= 0:
                break
            size += k
            room -= k * t
            used_in_run += k
            if used_in_run == n:
                r, used_in_run = r + 1, 0
            else:
                break
        if size == 0:
            return None
        counts.append(size)
        taken += size
    return tuple(counts) if taken == L else None


def stage_max_time(times: Sequence[float], counts: Sequence[int]) -> float:
    pre, start, worst = _prefix(times), 0, 0.0
    for c in counts:
        worst = max(worst, pre[start + c] - pre[start])
        start += c
    return worst


def balanced_counts(n_layers: int, stages: int) -> tuple[int, ...]:
    """Even split, the remainder going to the middle stages (which hold no embedding or head)."""
    base, extra = divmod(n_layers, stages)
    order = sorted(range(stages), key=lambda i: abs(i - (stages - 1) / 2))
    plus = set(order[:extra])
    return tuple(base + (1 if i in plus else 0) for i in range(stages))


def schedule_time_s(t_max: float, t_sum: float, p: int, m: int, virtual: int, chunk_max: float = 0.0) -> tuple[float, float]:
    """(total, bubble) seconds for m micro-batches over p pipeline ranks, where t_max is the
    slowest rank's forward + backward of one micro-batch (all its chunks), t_sum the sum
    over ranks and chunk_max the slowest single chunk (interleaved schedules)."""
    if p == 1:
        return m * t_max, 0.0
    if virtual > 1:
        # Narayanan et al. 2021, Sec. 2.2.2: (p - 1) chunk times, t_max / v when chunks are even
        bubble = (p - 1) * max(t_max / virtual, chunk_max)
    else:
        bubble = t_sum - t_max  # (m - 1) t_max + sum_i t_i: (p - 1) t when balanced
    return m * t_max + bubble, bubble
