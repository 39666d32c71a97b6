"""Shared-memory workers' cost terms.

k threads in one process deliver 1 + (k - 1) e of one thread's FLOP/s (e measured by
`autopar calibrate`, and again on the spot when the cores are busy: calibrate/load.py)
and k times its memory bandwidth, capped by what the node's memory bus gives each process.
On busy cores e < 0: k threads run slower than one (every operator's barrier waits for
the descheduled thread), each extra thread a factor 1 + e, so (1 + e)^(k - 1) > 0. Hogwild (Niu et al. 2011): lock-free updates collide; the
analysis assumes sparse updates, dense models pay more. ASSUMED: 1 + 0.10 (k - 1) steps.
"""

from __future__ import annotations

HOGWILD_COST_PER_EXTRA_WORKER = 0.10  # ASSUMED


def thread_flops(peak_flops: float, threads: int, thread_efficiency: float) -> float:
    """FLOP/s of one process running `threads` intra-op threads."""
    if thread_efficiency < 0:
        return peak_flops * (1 + thread_efficiency) ** (threads - 1)
    return peak_flops * (1 + (threads - 1) * thread_efficiency)


def hogwild_steps_factor(workers: int) -> float:
    return 1 + HOGWILD_COST_PER_EXTRA_WORKER * (workers - 1) if workers > 1 else 1.0
