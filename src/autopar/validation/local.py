"""Predicted vs measured on this machine: run strategies with the runtime, compare with
the cost model, and score the planner (MAPE, Spearman rank correlation, regret)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from autopar.cost.model import CostModel
from autopar.spec.cluster import Cluster
from autopar.spec.recipe import Recipe
from autopar.spec.strategy import Strategy
from autopar.techniques import plan_problem


@dataclass(frozen=True)
class Row:
    strategy: Strategy
    source: str  # "plan N" or "baseline"
    predicted_step_time_s: float
    measured_step_time_s: Optional[float]
    predicted_memory_bytes: float
    measured_memory_bytes: Optional[float]
    error: Optional[str] = None
    steps_factor: float = 1.0  # statistical efficiency the planner charges (asynchronous, subnetworks)

    def to_dict(self) -> dict:
        return {"strategy": self.strategy.to_text(), "source": self.source,
                "predicted_step_time_s": self.predicted_step_time_s, "measured_step_time_s": self.measured_step_time_s,
                "predicted_memory_bytes": self.predicted_memory_bytes, "measured_memory_bytes": self.measured_memory_bytes,
                **({"error": self.error} if self.error else {})}


def baselines(devices: int, global_batch: int, layers: int, shared_memory: bool = False) -> list[Strategy]:
    """Single process, DDP, FSDP, TP and PP on `devices` processes (those that divide the batch),
    and on shared-memory devices (CPU cores) one process of `devices` threads."""
    out = [Strategy()]
    if devices > 1 and shared_memory:
        out.append(Strategy(threads=devices))
    if devices > 1 and global_batch % devices == 0:
        out += [Strategy(dp=devices), Strategy(dp=devices, zero=3)]
    if devices > 1:
        out.append(Strategy(tp=devices))
    if 1 < devices <= layers and global_batch % (2 * devices) == 0:
        out.append(Strategy(pp=devices, microbatch=global_batch // (2 * devices)))
    return out


def measure(recipe_path: str, strategy: Strategy, steps: int, cluster_path: Optional[str] = None, timeout_s: float = 600) -> dict:
    """Run the strategy under torchrun in a fresh process; return the runtime's JSON report."""
    from autopar.runtime.launch import LAUNCHER_ENV, Rendezvous, WorkerArgs, torchrun_args, worker_env

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        worker = WorkerArgs(recipe_path, strategy, steps, cluster=cluster_path, json=True, report=str(report))
        cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(strategy, Rendezvous(), worker)]
        # the workers' launcher is the torchrun started here, not an in-process launch made before
        env = {**{k: v for k, v in os.environ.items() if k != LAUNCHER_ENV}, **worker_env(strategy)}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0 or not report.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"exit {proc.returncode}: {' | '.join(tail)}")
        return json.loads(report.read_text())


def measured_step_s(report: dict, warmup: int = 1) -> float:
    times = report["step_times_s"][warmup:] or report["step_times_s"]
    return statistics.median(times)


def validate(recipe: Recipe, recipe_path: str, cluster: Cluster, strategies: Sequence[tuple[Strategy, str]], steps: int,
             cluster_path: Optional[str] = None, progress=None) -> list[Row]:
    """Run each strategy the rules accept (others are skipped) and pair it with its estimate."""
    model = CostModel.for_recipe(recipe, cluster)
    rows = []
    for s, source in strategies:
        if plan_problem(s, model.facts, recipe.training.global_batch, None, cluster):
            continue
        s = model.with_stages(s)  # run the layout that is predicted
        est = model.estimate(s)
        try:
            rep = measure(recipe_path, s, steps, cluster_path)
            rows.append(Row(s, source, est.step_time_s, measured_step_s(rep), est.memory_per_device_bytes,
                            float(rep["peak_memory_bytes"]), steps_factor=est.steps_factor))
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            rows.append(Row(s, source, est.step_time_s, None, est.memory_per_device_bytes, None, str(err)[:300], est.steps_factor))
        if progress:
            progress(rows[-1])
    return rows


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson correlation of the ranks."""
    rx, ry = ranks(xs), ranks(ys)
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / (vx * vy) ** 0.5 if vx and vy else float("nan")


@dataclass(frozen=True)
class Scores:
    mape: float
    spearman: float
    regret: float  # measured time to train of the planner's choice / the best measured - 1

    def to_dict(self) -> dict:
        return {"mape": self.mape, "spearman": self.spearman, "regret": self.regret}


def score(rows: Sequence[Row]) -> Scores:
    ok = [r for r in rows if r.measured_step_time_s]
    mape = statistics.mean(abs(r.predicted_step_time_s / r.measured_step_time_s - 1) for r in ok) if ok else float("nan")
    rho = spearman([r.predicted_step_time_s for r in ok], [r.measured_step_time_s for r in ok])
    chosen = next((r for r in ok if r.source == "plan 1"), None)
    # the planner's objective: steps x statistical-efficiency factor x step time
    best = min((r.measured_step_time_s * r.steps_factor for r in ok), default=None)
    regret = chosen.measured_step_time_s * chosen.steps_factor / best - 1 if chosen and best else float("nan")
    return Scores(mape, rho, regret)
