"""`autopar plan RECIPE`: the best plans, why they win, why each technique lost."""

from __future__ import annotations

import os
from typing import Optional

from autopar.cli.common import add_recipe_args, load_inputs, print_json, require_cluster, write_text_atomic
from autopar.cli.export_cmd import emit
from autopar.cli.tables import nbytes, num, seconds, table
from autopar.cost.model import CostModel
from autopar.errors import InputError
from autopar.export import parse_format
from autopar.plan.explain import why_not
from autopar.plan.planner import Objective, parse_fix, plan
from autopar.spec.cluster import LOCAL
from autopar.spec.strategy import Strategy


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="search every parallelization and rank the plans")
    add_recipe_args(p)
    p.add_argument("--top", type=int, default=5, metavar="K", help="plans to show (default 5)")
    p.add_argument("--fix", metavar="KNOBS", help='pin knobs and search the rest, e.g. "tp=8,pp=16"')
    p.add_argument("--why", metavar="STRATEGY", help='also explain why this strategy is not plan 1, e.g. "dp=1024,zero=3"')
    p.add_argument("--objective", choices=("time", "throughput", "devices"), default="time",
                   help="time to train (default), raw throughput, or device-time (cost)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--export", metavar="FORMAT", help="also write plan 1 as a torchtitan, megatron, deepspeed or accelerate config "
                                                      "(printed alone, or to --out FILE beside the table)")
    p.add_argument("--out", metavar="FILE", help="with --export: the file to write")
    p.add_argument("--report", metavar="FILE.html", help="also write a self-contained HTML report: plans, why, step time and memory "
                                                       "plots, plan 1's pipeline timeline, time to train against devices")
    p.set_defaults(func=run)


def run(args) -> int:

    recipe, cluster = load_inputs(args)
    cluster = require_cluster(cluster)
    if args.top < 1:
        raise InputError("--top", args.top, "expected an integer >= 1")
    fix = parse_fix(args.fix) if args.fix else None

    why = Strategy.parse(args.why, field_path="--why") if args.why else None
    if args.out and not args.export:
        raise InputError("--out", args.out, "needs --export FORMAT (what to write)")
    fmt = parse_format(args.export, "--export") if args.export else None
    result = plan(recipe, cluster, top_k=args.top, fix=fix, objective=Objective(args.objective))
    if args.report:
        from autopar.report import plan_page

        write_text_atomic(args.report, plan_page(result, CostModel.for_recipe(recipe, cluster, result.profile)), "--report")
    if fmt is not None and args.out is None:  # the config alone on stdout, for a pipe or a redirect
        emit(fmt, result.plans[0].strategy, recipe, cluster, None, "--export")
        return 0
    reason = _why_not(why, result, recipe, cluster, Objective(args.objective), fix) if why is not None else None
    if args.json:
        # the recipe rides along, so `autopar export PLAN.json --to F` needs nothing else
        print_json({**result.to_dict(), "recipe_spec": recipe.model_dump(mode="json", exclude_none=True),
                    **({"why": {"strategy": why.to_dict(), "reason": reason}} if why else {})})
        return 0
    print(render(result))
    if why is not None:
        print(f"\nwhy not {why.to_text()}: {reason}")
    if fmt is not None:
        emit(fmt, result.plans[0].strategy, recipe, cluster, args.out, "--export")
    return 0


def _why_not(s, result, recipe, cluster, objective, fix=None) -> str:

    model = CostModel.for_recipe(recipe, cluster, result.profile)  # the profile the search used: no second profiling
    return why_not(s, result.plans[0].estimate, model, cluster, objective, fix)


def busy_cores_note(cluster, load: Optional[float] = None) -> str:
    """On shared cores, say when the machine is busy: `local` measured its busy cores now and
    the predictions include them; other CPU clusters assume idle cores, so a load average at
    the core count means measured steps will be slower than predicted."""
    if cluster.busy_cores:
        return (f"note: planned on a loaded machine: {cluster.busy_cores} of {cluster.devices_per_node} cores busy with other "
                "processes; the predictions include it (threads and processes stepping together were measured under this "
                "load): plan again when the load changes")
    if not cluster.device.shared_memory or cluster.name == LOCAL or not hasattr(os, "getloadavg"):
        return ""
    load = os.getloadavg()[0] if load is None else load
    cores = os.cpu_count() or 1
    if load < cores:
        return ""
    return (f"note: this machine is busy now (load average {load:.2f} on {cores} cores); the predictions assume idle cores, "
            "so measured steps will be slower than these")


STRATEGY_WIDTH = 35  # the table fits 100 columns; the full text is in --json and `why plan 1`


def render(result) -> str:
    cl = result.cluster
    lines = [f"cluster: {cl.nodes} x {cl.devices_per_node} {cl.device.name} ({cl.devices} devices); "
             f"searched {result.candidates} candidates in {result.seconds:.2f} s (profile {result.profile_seconds:.2f} s)"]
    rows = []
    for p in result.plans:
        e = p.estimate
        rows.append([p.rank, e.strategy.to_text(), e.devices_used, seconds(e.step_time_s), num(e.throughput_samples_s, 4),
                     nbytes(e.memory_per_device_bytes), f"{e.mfu:.1%}", seconds(e.time_to_train_s)])
    lines.append(table(["#", "strategy", "devices", "step", "samples/s", "mem/device", "MFU", "time to train"], rows, "rlrrrrrr",
                       wrap={1: STRATEGY_WIDTH}))
    busy = busy_cores_note(cl)
    if busy:
        lines.append(busy)
    best = result.plans[0]
    lines.append(f"\nwhy plan 1: {best.explanation}")
    b = best.estimate.time_breakdown_s
    lines.append("  step breakdown: " + ", ".join(f"{k} {seconds(v)}" for k, v in b.items() if v > 0))
    lines.append("\nwhy not the others:")
    for r in result.rejected:
        lines.append(f"  - {r.family}: {r.reason}")
    return "\n".join(lines)
