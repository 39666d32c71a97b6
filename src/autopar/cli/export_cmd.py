"""`autopar export RECIPE|PLAN.json --to FORMAT`: plan 1 (or --plan N / a saved plan / --strategy) as a
torchtitan, Megatron-LM, DeepSpeed or accelerate config (autopar/export)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from autopar.cli.common import add_recipe_args, load_inputs, require_cluster, write_text_atomic
from autopar.errors import InputError
from autopar.export import Format, export, parse_format
from autopar.spec.cluster import Cluster
from autopar.spec.recipe import Recipe
from autopar.spec.strategy import Strategy


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a plan as a torchtitan, Megatron-LM, DeepSpeed or accelerate config")
    add_recipe_args(p)
    p.add_argument("--to", required=True, metavar="FORMAT", help=f"one of {', '.join(f.value for f in Format)}")
    p.add_argument("--plan", default="1", metavar="N|FILE[:N]", help="the planner's N-th plan (default 1) or a saved plan file; "
                   "with a saved plan (PLAN.json) as the first argument, its N-th plan")
    p.add_argument("--strategy", help="export this strategy instead of a plan")
    p.add_argument("--out", metavar="FILE", help="write there (atomically) instead of printing")
    p.set_defaults(func=run)


def run(args) -> int:
    fmt = parse_format(args.to)
    saved = _saved_plan(args.recipe)
    if saved is not None:  # autopar plan RECIPE --json > PLAN.json: its recipe, cluster and plans
        recipe, result = saved
        n = int(args.plan) if args.plan.isdigit() else 0
        if not 1 <= n <= len(result.plans):
            raise InputError("--plan", args.plan, f"expected a plan number 1 .. {len(result.plans)} of {args.recipe}")
        strategy = _checked(args.strategy, recipe, result.cluster) if args.strategy else result.plans[n - 1].strategy
        emit(fmt, strategy, recipe, result.cluster, args.out, "--to")
        return 0
    recipe, cluster = load_inputs(args)
    cluster = require_cluster(cluster)
    if args.strategy:
        strategy = _checked(args.strategy, recipe, cluster)
    else:
        from autopar.cli.run_cmd import strategy_from_plan

        strategy = strategy_from_plan(recipe, cluster, args.plan, cluster.nodes)
    emit(fmt, strategy, recipe, cluster, args.out, "--to")
    return 0


def _checked(text: str, recipe: Recipe, cluster: Cluster) -> Strategy:
    """--strategy parsed and checked by the same rules as estimate and run (exit 2 naming the
    rule), so no export describes a job that cannot start (dp not dividing the batch, ...)."""
    from autopar.profile.profiler import profile_recipe
    from autopar.techniques import check_strategy

    s = Strategy.parse(text)
    check_strategy(s, profile_recipe(recipe).facts, recipe.training.global_batch, cluster, precision=recipe.training.precision)
    return s


def _saved_plan(path: str):
    """(recipe, PlanResult) of a saved plan file (JSON with its recipe), or None for a recipe."""
    if not path.endswith(".json"):
        return None
    from autopar.cli.run_cmd import load_plan
    from autopar.spec.recipe import parse_recipe

    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None  # not a readable plan: read it as a recipe, which says what is wrong
    if not isinstance(raw, dict) or "plans" not in raw:
        return None
    if "recipe_spec" not in raw:
        raise InputError("recipe", path, "is a plan saved without its recipe; save it again with autopar plan RECIPE --json > FILE")
    return parse_recipe(raw["recipe_spec"]), load_plan(path)


def emit(fmt: Format, strategy: Strategy, recipe: Recipe, cluster: Cluster, out: Optional[str], field: str) -> None:
    """Export `strategy` (its stage layout written in, as `run` would execute it) and print it
    or write it to `out`: a temp file renamed into place, so nothing is left half-written."""
    from autopar.cost.model import CostModel

    if strategy.pp > 1 and strategy.stages is None:
        strategy = CostModel.for_recipe(recipe, cluster).with_stages(strategy)
    text = export(fmt, strategy, recipe, cluster, field)
    if out is None:
        print(text, end="")
        return
    if Path(out).is_dir():
        raise InputError("--out", out, "is a directory; give a file name")
    write_text_atomic(out, text, "--out")
    print(f"autopar: wrote {fmt.value} config for {strategy.to_text()} to {out}")
