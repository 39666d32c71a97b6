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

Memory: the micro-batches whose activations a stage holds at its peak
(`microbatches_in_flight`) and the point-to-point sends between stages (`p2p_s`).

The default stage layout, used by the cost model and executed by the runtime alike, is
`layout_runs` over the profiled per-block times (the embedding riding on the first
block, the head on the last: `block_runs`); see autopar.cost.model.CostModel.layout.
"""

from __future__ import annotations

import functools
import math
from itertools import combinations
from typing import Callable, Optional, Sequence

from autopar.cost import collectives as coll
from autopar.cost.efficiency import Efficiency
from autopar.spec.cluster import Cluster
from autopar.spec.enums import Schedule
from autopar.util import run_lengths

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
    if best is not None:
        hi = _runs_max(runs, best)
    while best is not None and hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2
        found = _greedy_runs(runs, L, stages, mid)
        if found is None:
            lo = mid
        else:  # the packing's own slowest stage is feasible too, and may be well below mid
            hi, best = _runs_max(runs, found), found
    return best


def _runs_max(runs: Sequence[tuple[float, int]], counts: Sequence[int]) -> float:
    """Slowest stage of `counts` layers per stage over runs of (time, count)."""
    worst, r, left = 0.0, 0, runs[0][1] if runs else 0
    for c in counts:
        total = 0.0
        while c > 0:
            k = min(c, left)
            total += k * runs[r][0]
            c -= k
            left -= k
            if left == 0 and r + 1 < len(runs):
                r += 1
                left = runs[r][1]
        worst = max(worst, total)
    return worst


def _greedy_runs(runs: Sequence[tuple[float, int]], L: int, stages: int, limit: float) -> Optional[tuple[int, ...]]:
    """Greedy packing under `limit`: each stage takes as many layers as fit, leaving one for
    each later stage. Inside a run of identical layers every stage that starts empty takes
    the same k = floor(limit / t) layers, so such stages are placed q at a time: O(runs)
    jumps instead of O(stages) steps."""
    counts: list[int] = []
    r, used_in_run, taken = 0, 0, 0  # current run, layers of it already placed, layers placed
    while len(counts) < stages:
        i = len(counts)
        if r < len(runs):
            t, n = runs[r]
            k = n if t <= 0 else int(limit / t * (1 + 1e-12))
            left = n - used_in_run
            if 0 < k < left:  # whole stages of k layers inside this run
                # stage j (from i) may take k if taken + (j+1-i) k + (stages - j - 1) <= L
                room = L - taken - (stages - i - 1)
                fits = (room - k) // (k - 1) + 1 if k > 1 else (stages if room >= 1 else 0)
                q = min((left - 1) // k, stages - i - 1, fits)
                if q > 0:
                    counts.extend([k] * q)
                    taken += q * k
                    used_in_run += q * k
                    continue
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


def schedule_time_s(t_max: float, t_sum: float, p: int, m: int, virtual: int, chunk_max: float = 0.0,
                    keep: float = 1.0) -> tuple[float, float]:
    """(total, bubble) seconds for m micro-batches over p pipeline ranks, where t_max is the
    slowest rank's forward + backward of one micro-batch (all its chunks), t_sum the sum
    over ranks and chunk_max the slowest single chunk (interleaved schedules). `keep` is
    the share of the bubble a zero-bubble schedule leaves (zero_bubble_keep)."""
    if p == 1:
        return m * t_max, 0.0
    if virtual > 1:
        # Narayanan et al. 2021, Sec. 2.2.2: (p - 1) chunk times, t_max / v when chunks are even
        bubble = (p - 1) * max(t_max / virtual, chunk_max)
    else:
        bubble = t_sum - t_max  # (m - 1) t_max + sum_i t_i: (p - 1) t when balanced
    return m * t_max + keep * bubble, keep * bubble


def zero_bubble_keep(forward_s: float, backward_s: float) -> float:
    """Share of the 1F1B (or interleaved) bubble a zero-bubble schedule keeps. Qi et al. 2023
    (Sec. 3, ZB-H1): splitting backward into B (input gradient) and W (weight gradient) and
    filling the warm-up and cool-down with W leaves (p - 1)(T_F + T_B - T_W) of the 1F1B
    bubble (p - 1)(T_F + T_B + T_W). B and W are the two GEMMs of each Linear's backward,
    equal in FLOPs (T_B = T_W = backward / 2), so the bubble keeps T_F / (T_F + backward)."""
    total = forward_s + backward_s
    return forward_s / total if total > 0 else 1.0


def zbv_bubble_s(forward_s: float, backward_s: float, recompute_s: float, p: int) -> float:
    """ZB-V's bubble (Qi et al. 2023, Sec. 6): (p - 1)(T_F + T_B - 2 T_W) with the times of one
    chunk, half of a rank's. B and W are the two GEMMs of each backward (T_B = T_W = backward / 2,
    recomputation runs before B), so it vanishes when the forward takes no longer than W."""
    return (p - 1) * max(0.0, forward_s + recompute_s - backward_s / 2) / 2


def dualpipev_bubble_s(forward_s: float, backward_s: float, recompute_s: float, p: int) -> float:
    """DualPipeV's bubble: DualPipe's (PP/2 - 1)(F&B + B - 3W) (deepseek-ai/DualPipe README,
    DeepSeek-V3 report Sec. 3.2.1) on the 2 p ranks of the DualPipe it halves, i.e.
    (p - 1)(F&B + B - 3W) with one chunk's times (half a rank's): B its full backward
    (recomputation included), W = backward / 2 of it. torch's ScheduleDualPipeV runs an
    OVERLAP_F_B pair one after the other unless a custom overlap is registered, so
    F&B = F + B. The result exceeds ZB-V's bubble by (p - 1)(recompute + backward) / 2 on
    the same layout, with one more micro-batch in flight: ZB-V dominates it here."""
    f, b, w = forward_s / 2, (backward_s + recompute_s) / 2, backward_s / 4
    return (p - 1) * max(0.0, (f + b) + b - 3 * w)


def microbatches_in_flight(schedule: Schedule, stage: int, pp: int, m: int, virtual: int) -> float:
    """Micro-batches whose activations a stage holds at its peak.

    GPipe: all m (forward of every micro-batch before any backward). 1F1B: pp - stage
    (at most m). Interleaved: the first stage holds pp micro-batches of its layers
    times (1 + (p-1)/(p v)) (Korthikanti et al. 2022, Sec. 4.2.3). ZB-V: every rank pp
    micro-batches of its two chunks, 1F1B's first-stage peak on all ranks (Qi et al.
    2023, Sec. 6: balanced peak memory).
    """
    if pp <= 1:
        return 1.0
    if schedule is Schedule.GPIPE:
        return float(m)
    if schedule is Schedule.ZBV:
        return float(min(pp, m))
    if schedule is Schedule.DUALPIPEV:  # the DualPipe README's PP + 1
        return float(min(pp + 1, m))
    base = float(min(pp - stage, m))  # zero bubble: ZB-H1's peak equals 1F1B's (Qi et al. 2023, Table 2)
    if schedule in (Schedule.INTERLEAVED, Schedule.ZERO_BUBBLE) and virtual > 1:
        return min(float(m), base * (1 + (pp - 1) / (pp * virtual))) if stage == 0 else base
    return base


def flight_sums(schedule: Schedule, pp: int, m: int) -> tuple[float, float]:
    """(min over ranks, sum over ranks of 1 /) microbatches_in_flight(schedule, r, pp, m, 1),
    in closed form: 1F1B and zero bubble hold min(k, m) on the rank k stages from the end
    (k = 1..pp), so the sum is H(min(pp, m)) + (pp - m) / m beyond m; the others hold the
    same count on every rank."""
    if pp <= 1:
        return 1.0, 1.0
    if schedule in (Schedule.GPIPE, Schedule.ZBV, Schedule.DUALPIPEV):
        f = microbatches_in_flight(schedule, 0, pp, m, 1)
        return f, pp / f
    harmonic = sum(1 / k for k in range(min(pp, m), 0, -1))
    return 1.0, harmonic + max(0, pp - m) / m


@functools.lru_cache(maxsize=64)
def unit_bounds(cuts: tuple[int, ...], n_layers: int) -> tuple[tuple[int, int], ...]:
    """Layers [a, e) of each block unit: a block and the layers after it until the next block;
    the first unit starts at layer 0 (the embedding rides with the first block). Memoised:
    a search asks for one profile's units thousands of times."""
    return tuple(zip([0, *cuts[1:]], [*cuts[1:], n_layers]))


def rank_ranges(counts: Optional[tuple[int, ...]], pp: int, virtual: int, cuts: Optional[Sequence[int]],
                n_layers: int, v_shape: bool = False) -> list[list[tuple[int, int]]]:
    """Layer ranges [start, end) of each pipeline rank; rank r holds chunks r, r + pp, ...
    (looped), or with `v_shape` (ZB-V) chunks r and 2 pp - 1 - r. `counts` are blocks per
    chunk (None: no pipeline, one range of every layer)."""
    if counts is None:
        return [[(0, n_layers)]]
    units = unit_bounds(cuts, n_layers)
    bounds, u = [], 0
    for c in counts:
        bounds.append((units[u][0], units[u + c - 1][1]))
        u += c
    if v_shape:
        return [[bounds[r], bounds[2 * pp - 1 - r]] for r in range(pp)]
    return [[bounds[r + pp * k] for k in range(virtual)] for r in range(pp)]


def block_runs(times: Sequence[float], cuts: Sequence[int]) -> list[tuple[float, int]]:
    """Per-block-unit times as runs of equal values."""
    return run_lengths([sum(times[a:e]) for a, e in unit_bounds(cuts, len(times))])


def p2p_s(chunks: list[tuple[int, int]], output_bytes: Callable[[int], float], n_layers: int, tp: int, sequence_parallel: bool,
          crosses_nodes: bool, nic_share: int, tp_group: coll.Placement, cluster: Cluster, eff: Efficiency) -> float:
    """One micro-batch's sends of a pipeline rank: each chunk's activation to the next stage
    and its gradient back. output_bytes(i) is what layer i outputs (split over tp ranks by
    Megatron's scatter/gather; without SP the next stage all-gathers it)."""
    total = 0.0
    priced: dict[float, float] = {}  # boundary bytes -> one send (and re-assembly): chunks of a rank often share them
    for start, end in chunks:
        sends = (end < n_layers) + (start > 0)
        nbytes = output_bytes(end - 1) if end < n_layers else output_bytes(start - 1)
        one = priced.get(nbytes)
        if one is None:
            one = coll.p2p_s(nbytes, crosses_nodes, nic_share, cluster, eff)
            if tp > 1 and not sequence_parallel:  # re-assemble the scattered activation
                one += coll.all_gather_s(nbytes * tp, tp_group, cluster, eff)
            priced[nbytes] = one
        total += sends * one
    return total


def memory_layout(table, cuts: Sequence[int], pp: int, per_param_bytes: float, flights: Sequence[float],
                  cap_bytes: float) -> Optional[tuple[int, ...]]:
    """Blocks per stage minimising the slowest stage subject to each stage's memory (states,
    activations of the micro-batches it holds in flight, its boundary buffers) fitting
    `cap_bytes`. `table` is a cost.layers.LayerTable of the whole model."""
    units = unit_bounds(cuts, len(table.costs))
    costs, params, acts = table.costs, table.prefix["params"], table.prefix["activation_bytes"]
    cap = cap_bytes - table.max_working(0, len(costs))  # the largest layer's recompute working set bounds every stage's

    def mem(i: int, a: int, e: int) -> float:  # units [a, e) in stage i
        lo, hi = units[a][0], units[e - 1][1]
        return per_param_bytes * (params[hi] - params[lo]) + flights[i] * (acts[hi] - acts[lo]) + 2 * costs[hi - 1].output_bytes

    times = [table.range_time(a, e) for a, e in units]
    return layout_fast(times, pp, mem, cap, rel_tol=1e-3)
