"""Memory per device: model states, activations, buffers.

Model states follow ZeRO (Rajbhandari et al. 2020, Sec. 3.1 and 5): mixed-precision
Adam keeps 2 Psi (16-bit params) + 2 Psi (16-bit grads) + K Psi (fp32 master, m, v:
K = 12). Stage 1 shards the K Psi over the data-parallel group, stage 2 also the
gradients, stage 3 also the parameters:
  baseline (2 + 2 + K) Psi;  P_os 4 Psi + K Psi / N_d;  P_os+g 2 Psi + (2 + K) Psi / N_d;
  P_os+g+p (2 + 2 + K) Psi / N_d.
Activations per layer come from the profile (which reproduces Korthikanti et al.
2022 Eqs. 1-6 for transformers): tensor-parallel regions divide by t, the rest too
under sequence parallelism; selective recompute drops the attention core; full
recompute keeps only each layer's input.
"""

from __future__ import annotations

from dataclasses import dataclass

from autopar.profile.types import LayerStats
from autopar.spec.enums import Optimizer, Precision, Recompute


@dataclass(frozen=True)
class StateBytes:
    params: float
    grads: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer


def bytes_per_param(optimizer: Optimizer, precision: Precision) -> tuple[int, int, int]:
    """(parameter, gradient, optimizer-state) bytes per parameter, unsharded.

    Mixed precision keeps an fp32 master copy in the optimizer state (ZeRO's K
    includes it): Adam K = 4 + 4 + 4 = 12, momentum K = 8, SGD K = 4.
    """
    states = 4 * optimizer.state_floats_per_param
    if precision.is_mixed:
        return 2, 2, 4 + states
    return 4, 4, states


def model_state_bytes(params: float, optimizer: Optimizer, precision: Precision, zero: int, dp: int) -> StateBytes:
    p, g, k = bytes_per_param(optimizer, precision)
    return StateBytes(
        params=params * p / (dp if zero >= 3 else 1),
        grads=params * g / (dp if zero >= 2 else 1),
        optimizer=params * k / (dp if zero >= 1 else 1),
    )


def layer_activation_bytes(stats: LayerStats, b: int, tp: int, sp: bool, recompute: Recompute) -> float:
    """Bytes one micro-batch leaves saved in this layer until its backward."""
    if recompute is Recompute.FULL:
        return stats.input_bytes * b / (tp if sp else 1)  # Korthikanti Eq. 6: 2sbh (/t with SP)
    replicated = stats.saved_bytes - stats.saved_tp_bytes
    kept = stats.saved_tp_bytes / tp + (replicated / tp if sp else replicated)  # Eqs. 2 and 4
    if recompute is Recompute.SELECTIVE and stats.has_core:
        kept -= stats.saved_core_bytes / tp  # Eq. 5: the 5as^2b of the core are recomputed
    return kept * b


def layer_working_bytes(stats: LayerStats, b: int, tp: int, sp: bool) -> float:
    """Extra memory while one layer's backward runs under full recompute: its full activations."""
    return layer_activation_bytes(stats, b, tp, sp, Recompute.NONE)


def microbatches_in_flight(schedule: str, stage: int, pp: int, m: int, virtual: int) -> float:
    """Micro-batches whose activations a stage holds at its peak.

    GPipe: all m (forward of every micro-batch before any backward). 1F1B: pp - stage
    (at most m). Interleaved: the first stage holds pp micro-batches of its layers
    times (1 + (p-1)/(p v)) (Korthikanti et al. 2022, Sec. 4.2.3).
    """
    if pp <= 1:
        return 1.0
    if schedule == "gpipe":
        return float(m)
    base = float(min(pp - stage, m))
    if schedule == "interleaved" and virtual > 1:
        return min(float(m) * 1.0, base * (1 + (pp - 1) / (pp * virtual))) if stage == 0 else base
    return base
