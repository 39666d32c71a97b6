"""Turn measurements into the cluster file's numbers, so that the cost model's own
formulas reproduce what was measured (its efficiency constants are divided out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from autopar.cost.efficiency import DEFAULT, Efficiency


@dataclass(frozen=True)
class AlphaBeta:
    latency_s: float  # intercept
    seconds_per_byte: float  # slope

    @property
    def bandwidth_Bps(self) -> float:
        return 1.0 / self.seconds_per_byte if self.seconds_per_byte > 0 else float("inf")


def fit_alpha_beta(sizes: Sequence[float], times: Sequence[float]) -> AlphaBeta:
    """Least squares t = a + b n in relative error (weights 1/t^2), so the small sizes
    that fix the latency count as much as the large ones that fix the bandwidth; a, b >= 0."""
    w = [1.0 / max(t, 1e-12) ** 2 for t in times]
    sw = sum(w)
    mx = sum(wi * x for wi, x in zip(w, sizes)) / sw
    my = sum(wi * y for wi, y in zip(w, times)) / sw
    sxx = sum(wi * (x - mx) ** 2 for wi, x in zip(w, sizes))
    slope = sum(wi * (x - mx) * (y - my) for wi, x, y in zip(w, sizes, times)) / sxx if sxx else 0.0
    if slope <= 0:  # noise swamps the sizes (a small message measured slower than the largest)
        return _unresolved(sizes, times)
    return AlphaBeta(max(0.0, my - slope * mx), slope)


def _unresolved(sizes: Sequence[float], times: Sequence[float]) -> AlphaBeta:
    """A fit when the times do not grow with the size: the largest message's time taken as
    all transfer (the least bandwidth consistent with it), the rest of the fastest as latency."""
    largest = max(range(len(sizes)), key=lambda i: sizes[i])
    slope = max(times[largest], 1e-12) / sizes[largest]
    fastest = min(range(len(sizes)), key=lambda i: times[i])
    return AlphaBeta(max(0.0, times[fastest] - slope * sizes[fastest]), slope)


def link_from_all_reduce(fit: AlphaBeta, ranks: int, eff: Efficiency = DEFAULT) -> tuple[float, float]:
    """(bandwidth B/s, latency s) of the intra-node link such that the cost model's ring
    all-reduce, 2 (d-1)/d n / (B eff) + 2 (d-1) alpha, reproduces the fit."""
    volume = 2 * (ranks - 1) / ranks
    bandwidth = volume / fit.seconds_per_byte / eff.collective_intra
    latency = fit.latency_s / (2 * (ranks - 1))
    return bandwidth, latency


def gather_slowdown(all_reduce: AlphaBeta, all_gather: AlphaBeta, ranks: int) -> float:
    """How much slower all-gather / reduce-scatter run than the ring model predicts from
    the all-reduce bandwidth (gloo: 3-4x slower per byte, notes/torch-distributed-on-cpu)."""
    predicted = ((ranks - 1) / ranks) / (2 * (ranks - 1) / ranks) * all_reduce.seconds_per_byte
    return max(1.0, all_gather.seconds_per_byte / predicted)
