"""`autopar validate RECIPE [--top K] [--steps N] [--json]`: run the planner's top K plans
and the baselines on this machine, and compare predictions with measurements."""

from __future__ import annotations

import sys

from autopar.cli.common import add_recipe_args, load_inputs, print_json, require_cluster, write_text_atomic
from autopar.cli.plan_cmd import busy_cores_note
from autopar.cli.tables import nbytes, seconds, table
from autopar.errors import InputError
from autopar.plan.planner import plan
from autopar.profile.profiler import profile_recipe
from autopar.validation.local import baselines, score, validate


def register(subparsers) -> None:
    p = subparsers.add_parser("validate", help="run top plans and baselines; predicted vs measured, Spearman, regret")
    add_recipe_args(p)
    p.add_argument("--top", type=int, default=3, metavar="K", help="planner plans to run (default 3)")
    p.add_argument("--steps", type=int, default=8, metavar="N", help="steps per run (default 8; the first is a warm-up)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--report", metavar="FILE.html", help="also write a self-contained HTML report (predicted against measured)")
    p.set_defaults(func=run)


def run(args) -> int:


    if args.steps < 2:
        raise InputError("--steps", args.steps, "expected an integer >= 2 (the first step is a warm-up)")
    if args.top < 1:
        raise InputError("--top", args.top, "expected an integer >= 1")
    recipe, cluster = load_inputs(args)
    cluster = require_cluster(cluster)
    profile = profile_recipe(recipe)
    result = plan(recipe, cluster, top_k=args.top, profile=profile)
    chosen = [(p.strategy, f"plan {p.rank}") for p in result.plans]
    seen = {s for s, _ in chosen}
    for s in baselines(cluster.devices, recipe.training.global_batch, len(profile.layers), cluster.device.shared_memory):
        if s not in seen:
            chosen.append((s, "baseline"))
            seen.add(s)

    def progress(row):
        if not args.json:
            status = seconds(row.measured_step_time_s) if row.measured_step_time_s else f"failed: {row.error}"
            print(f"  ran {row.strategy.to_text():45} {status}", file=sys.stderr, flush=True)

    rows = validate(recipe, args.recipe, cluster, chosen, args.steps, getattr(args, "cluster", None), progress)
    sc = score(rows)
    if args.report:
        from autopar.report import validate_page

        write_text_atomic(args.report, validate_page(rows, sc), "--report")
    if args.json:
        print_json({"rows": [r.to_dict() for r in rows], **sc.to_dict()})
        return 0
    print(table(["strategy", "source", "predicted", "measured", "error", "pred. memory", "meas. memory"],
                [[r.strategy.to_text(), r.source, seconds(r.predicted_step_time_s),
                  seconds(r.measured_step_time_s) if r.measured_step_time_s else "failed",
                  f"{r.predicted_step_time_s / r.measured_step_time_s - 1:+.0%}" if r.measured_step_time_s else "-",
                  nbytes(r.predicted_memory_bytes), nbytes(r.measured_memory_bytes) if r.measured_memory_bytes else "-"] for r in rows],
                "llrrrrr"))
    print(f"\nMAPE {sc.mape:.1%}   Spearman {sc.spearman:.2f}   regret of plan 1 {sc.regret:+.1%}")
    busy = busy_cores_note(cluster)
    if busy:
        print(busy)
    return 0
