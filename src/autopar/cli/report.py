"""A run's report: what it measured beside what the cost model predicted (text or JSON)."""

from __future__ import annotations

import statistics
from typing import Any, Optional

from autopar.cli.tables import nbytes
from autopar.cost.estimate import Estimate
from autopar.runtime.report import RunResult
from autopar.spec.strategy import Strategy


def report_dict(result: RunResult, strategy: Strategy, prediction: Optional[Estimate], nproc: int,
                why_no_prediction: Optional[str] = None) -> dict[str, Any]:
    out = {"strategy": strategy.to_dict(), "nproc": nproc, **result.to_dict(),
           "predicted": prediction.to_dict() if prediction is not None else None}
    if prediction is None and why_no_prediction:
        out["no_prediction"] = why_no_prediction
    return out


def format_report(result: RunResult, strategy: Strategy, prediction: Optional[Estimate], why_no_prediction: Optional[str] = None) -> str:
    lines = [f"strategy {strategy.to_text()}: " + ", ".join(result.applied or ["single process"])]
    lines.append(f"{'step':>5} {'loss':>12} {'time s':>9} {'samples/s':>10} {'peak MB':>9}")
    for i, (loss, t, mem) in enumerate(zip(result.losses, result.step_times_s, result.step_peak_memory_bytes)):
        lines.append(f"{result.first_step + i + 1:>5} {loss:>12.6f} {t:>9.4f} {result.global_batch / t:>10.1f} {mem / 1e6:>9.1f}")
    measured = statistics.median(result.step_times_s) if result.step_times_s else float("nan")
    lines.append(f"measured: median step {measured:.4f} s, peak memory {nbytes(result.peak_memory_bytes)} per process")
    if prediction is None:
        lines.append(f"predicted: none ({why_no_prediction or 'no estimate'})")
    else:
        lines.append(f"predicted: step {prediction.step_time_s:.4f} s ({prediction.step_time_s / measured:.2f}x measured), "
                     f"memory {nbytes(prediction.memory_per_device_bytes)} per device")
    return "\n".join(lines)
