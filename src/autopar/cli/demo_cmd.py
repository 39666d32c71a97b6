"""`autopar demo`: plan a built-in recipe for this machine, run the chosen plan for a
few steps, and print the plan, the prediction and the measurement side by side."""

from __future__ import annotations

import json
import statistics
import tempfile
from importlib import resources
from pathlib import Path

from autopar.cli.common import load_inputs, require_cluster
from autopar.cli.plan_cmd import render
from autopar.cli.tables import nbytes, seconds, table
from autopar.errors import InputError
from autopar.plan.planner import plan


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="plan and run a built-in recipe on this machine (about a minute)")
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
        report = Path(tmp) / "report.json"
        worker = WorkerArgs(args.recipe, strategy, args.steps, cluster=args.cluster, report=str(report))
        code = launch(strategy, rdzv, worker)
        if code != 0 or not report.exists():
            print(f"autopar: the run failed (exit {code})")
            return code or 1
        measured = json.loads(report.read_text())
    print("\n== 3. prediction vs measurement ==")
    print(compare(best.estimate, measured))
    return 0


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
