"""`autopar demo`: plan a built-in recipe for this machine, run the chosen plan for a
few steps, and print the plan, the prediction and the measurement side by side."""

from __future__ import annotations

import json
import statistics
import tempfile
from importlib import resources
from pathlib import Path

import yaml

from autopar.cli.common import load_inputs, require_cluster
from autopar.cli.plan_cmd import render
from autopar.cli.tables import nbytes, seconds, table
from autopar.errors import InputError
from autopar.plan.planner import plan
from autopar.spec.cluster import cluster_to_yaml_dict


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="plan and run a built-in recipe on this machine, against the simple baselines (about a minute; the first use measures the machine)")
    p.add_argument("--recipe", help="another recipe instead of the built-in small GPT")
    p.add_argument("--cluster", metavar="FILE", help="cluster YAML (e.g. from `autopar calibrate`)")
    p.add_argument("--steps", type=int, default=20, help="training steps to run (default 20)")
    p.set_defaults(func=run)


def builtin_recipe() -> str:
    return str(resources.files("autopar.recipes").joinpath("demo.yaml"))


def run(args) -> int:
    from autopar.runtime.launch import Rendezvous, WorkerArgs, launch, preflight

    args.recipe = args.recipe or builtin_recipe()
    if args.steps < 2:
        raise InputError("--steps", args.steps, "expected an integer >= 2")
    recipe, cluster = load_inputs(args)
    cluster = require_cluster(cluster)
    print(f"== 1. plan: {Path(args.recipe).name} on this machine ==")
    result = plan(recipe, cluster, top_k=3)
    print(render(result))
    best = result.plans[0]
    strategy = best.strategy
    processes = strategy.devices // strategy.threads
    where = "in a single process" if processes == 1 else f"under torchrun, {processes} processes"
    print(f"\n== 2. run plan 1 ({strategy.to_text()}) for {args.steps} steps {where} ==", flush=True)
    rdzv = Rendezvous()
    preflight(recipe, strategy, strategy.devices, rdzv.nnodes)
    with tempfile.TemporaryDirectory() as tmp:
        report, priced = Path(tmp) / "report.json", Path(tmp) / "cluster.yaml"
        priced.write_text(yaml.safe_dump(cluster_to_yaml_dict(cluster), sort_keys=False))  # the run predicts as planned (its load)
        worker = WorkerArgs(args.recipe, strategy, args.steps, cluster=str(priced), report=str(report))
        code = launch(strategy, rdzv, worker)
        if code != 0 or not report.exists():
            print(f"autopar: the run failed (exit {code})")
            return code or 1
        measured = json.loads(report.read_text())
    print("\n== 3. prediction vs measurement ==")
    print(compare(best.estimate, measured))
    print(f"\n== 4. plan 1 against the baselines ({BASELINE_STEPS} steps each, the first a warm-up) ==", flush=True)
    print(against_baselines(recipe, cluster, args, best.estimate, measured))
    return 0


BASELINE_STEPS = 6


def against_baselines(recipe, cluster, args, estimate, measured: dict) -> str:
    """Run the simple ways to use this machine (one process; all cores as threads; as DDP
    processes) that plan 1 is not, and say whether plan 1 measured fastest."""
    from autopar.validation.local import Row, baselines, measured_step_s, validate

    devices = cluster.devices
    simple = [s for s in baselines(devices, recipe.training.global_batch, 1, cluster.device.shared_memory)[:3]
              if s.evolve(stages=None) != estimate.strategy.evolve(stages=None)]
    rows = validate(recipe, args.recipe, cluster, [(s, "baseline") for s in simple], BASELINE_STEPS, args.cluster)
    mine = Row(estimate.strategy, "plan 1", estimate.step_time_s, measured_step_s(measured), estimate.memory_per_device_bytes,
               float(measured["peak_memory_bytes"]), steps_factor=estimate.steps_factor)
    ran = [r for r in [mine, *rows] if r.measured_step_time_s]
    lines = table(["strategy", "", "predicted", "measured (median)", "error"],
                  [[r.strategy.to_text(), r.source, seconds(r.predicted_step_time_s),
                    seconds(r.measured_step_time_s) if r.measured_step_time_s else f"failed: {r.error}",
                    f"{r.predicted_step_time_s / r.measured_step_time_s - 1:+.0%}" if r.measured_step_time_s else ""]
                   for r in [mine, *rows]])
    best = min(ran, key=lambda r: r.measured_step_time_s * r.steps_factor)
    if best is mine:
        return lines + "\nplan 1 measured fastest"
    gap = mine.measured_step_time_s * mine.steps_factor / (best.measured_step_time_s * best.steps_factor) - 1
    noise = step_spread(measured["step_times_s"][1:] or measured["step_times_s"])
    verdict = (f"within the step-to-step spread of plan 1's own run (+-{noise:.0%}: its steps' interquartile range over "
               "their median), so no measured difference" if gap <= noise else "more than the spread of its own steps "
               f"(+-{noise:.0%}): the cost model ranked these wrongly here")
    return lines + (f"\nplan 1 measured {gap:.0%} slower than {best.strategy.to_text()} (per step, times steps to the same "
                    f"loss): {verdict}")


def step_spread(times: list[float]) -> float:
    """Interquartile range of step times over their median: how far one run's steps scatter."""
    if len(times) < 4:
        return 0.0
    q1, _, q3 = statistics.quantiles(times, n=4)
    return (q3 - q1) / statistics.median(times)


def compare(estimate, measured: dict) -> str:
    times = measured["step_times_s"][1:] or measured["step_times_s"]  # the first step warms up
    step = statistics.median(times)
    rows = [
        ["step time", seconds(estimate.step_time_s), seconds(step), f"{estimate.step_time_s / step - 1:+.0%}"],
        ["memory per device", nbytes(estimate.memory_per_device_bytes), nbytes(measured["peak_memory_bytes"]),
         f"{estimate.memory_per_device_bytes / measured['peak_memory_bytes'] - 1:+.0%}"],
    ]
    losses = measured["losses"]
    return (table(["", "predicted", "measured (median)", "error"], rows)
            + f"\nloss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps")
