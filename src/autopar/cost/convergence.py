"""Statistical efficiency: how many more steps a method needs to reach the same loss.

Synchronous methods compute the exact mini-batch gradient: factor 1. Asynchronous
and subnetwork methods trade steps for cheaper steps. These factors are ASSUMED
defaults (not fitted on the validation file, which has no such runs); `autopar
validate` measures real ones on small tasks, and the runtime tests bound them.

- Local SGD with period H (Stich 2019; Lin et al. 2020; Ortiz et al. 2021): the
  replicas drift for H - 1 steps; at fixed steps the loss lags, growing with H.
  Assumed: 1 + 0.04 (H - 1).
- Hogwild with k workers on one memory (Niu et al. 2011): lock-free updates collide;
  the analysis assumes sparse updates, dense models pay more. Assumed: 1 + 0.10 (k - 1).
- Independent subnetwork training over n workers (Yuan et al. 2022): each worker
  trains 1/n of the hidden units on 1/n of the batch, 1/n of a full step's work.
  Assumed (equal work): n times the steps, so it wins only where it saves
  communication or memory; the paper reports better than this in its regime
  (2-8 workers, slow networks).
"""

from __future__ import annotations

LOCAL_SGD_COST_PER_STEP_OF_DRIFT = 0.04
HOGWILD_COST_PER_EXTRA_WORKER = 0.10
SUBNET_STEPS_PER_WORKER = 1.0


def steps_factor(sync_async: bool, period: int, hogwild_workers: int, subnet_workers: int) -> float:
    factor = 1.0
    if sync_async and period > 1:
        factor *= 1 + LOCAL_SGD_COST_PER_STEP_OF_DRIFT * (period - 1)
    if hogwild_workers > 1:
        factor *= 1 + HOGWILD_COST_PER_EXTRA_WORKER * (hogwild_workers - 1)
    if subnet_workers > 1:
        factor *= SUBNET_STEPS_PER_WORKER * subnet_workers
    return factor
