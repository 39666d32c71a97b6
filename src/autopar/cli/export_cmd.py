"""`autopar export RECIPE --to FORMAT`: plan 1 (or --plan N / a saved plan / --strategy) as a
torchtitan, Megatron-LM, DeepSpeed or accelerate config (autopar/export)."""

from __future__ import annotations

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
    p.add_argument("--plan", default="1", metavar="N|FILE[:N]", help="the planner's N-th plan (default 1) or a saved plan file")
    p.add_argument("--strategy", help="export this strategy instead of a plan")
    p.add_argument("--out", metavar="FILE", help="write there (atomically) instead of printing")
    p.set_defaults(func=run)


def run(args) -> int:
    fmt = parse_format(args.to)
    recipe, cluster = load_inputs(args)
    cluster = require_cluster(cluster)
    if args.strategy:
        strategy = Strategy.parse(args.strategy)
    else:
        from autopar.cli.run_cmd import strategy_from_plan

        strategy = strategy_from_plan(recipe, cluster, args.plan, cluster.nodes)
    emit(fmt, strategy, recipe, cluster, args.out, "--to")
    return 0


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
