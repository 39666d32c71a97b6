"""`autopar run RECIPE (--strategy S | --plan N) --steps K`: train the recipe with that plan.

Every problem of the strategy for this recipe is reported (exit 2) before any process
starts; then torchrun runs one process per dp * tp * pp rank (see runtime/launch.py)
and rank 0 prints each step's loss, time, memory and throughput beside the cost
model's prediction. `--print-command` prints the torchrun command instead, to run the
same plan on a cluster (one command per node, with --nnodes/--node-rank/--rdzv-*).
`--checkpoint DIR [--save-every N]` saves DIR/step-<k>/ with torch.distributed.checkpoint
every N steps and at the end, and resumes from DIR's latest step, under this strategy
or another (see runtime/checkpoint.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional

from autopar.cli.common import add_recipe_args, load_inputs, write_text_atomic
from autopar.errors import InputError
from autopar.plan.result import PlanResult, recipe_fingerprint
from autopar.spec.cluster import LOCAL, Cluster, local_cluster, parse_cluster
from autopar.spec.recipe import Recipe
from autopar.spec.strategy import Strategy


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="train the recipe with a strategy or a plan, under torchrun", description=__doc__.splitlines()[0])
    add_recipe_args(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--strategy", metavar="TEXT", help='e.g. "dp=2,tp=2" or "pp=2,schedule=gpipe,microbatch=4"')
    which.add_argument("--plan", metavar="N|FILE[:N]", help="run the planner's N-th plan (default: 1, its best) for the nodes "
                       "asked, or plan N of a saved plan (autopar plan RECIPE --json > FILE) without searching again")
    p.add_argument("--steps", type=int, metavar="K", help="optimizer steps (default: the recipe's)")
    p.add_argument("--nproc", type=int, metavar="N", help="devices per node (default: the strategy's devices / nnodes)")
    p.add_argument("--nnodes", type=int, default=1, metavar="N", help="nodes (one torchrun per node)")
    p.add_argument("--node-rank", type=int, default=0, metavar="I", help="this node's index, 0 .. nnodes-1")
    p.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="c10d rendezvous address (node 0), needed with --nnodes > 1")
    p.add_argument("--rdzv-id", default="autopar", metavar="ID", help="job id shared by all nodes of one run")
    p.add_argument("--print-command", action="store_true", help="print the torchrun command and exit (with --nnodes > 1 "
                   "also write a Slurm batch script, --slurm FILE)")
    p.add_argument("--slurm", metavar="FILE", default="autopar.sbatch", help="with --print-command and --nnodes > 1: the sbatch script to write")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--checkpoint", metavar="DIR", help="save DIR/step-<k>/ (DCP) and resume from DIR's latest step, under any synchronous strategy")
    p.add_argument("--save-every", type=int, metavar="N", help="with --checkpoint: also save every N steps (default: at the end only)")
    p.add_argument("--keep", type=int, metavar="K", help="with --checkpoint: keep the newest K complete steps, remove older ones (default: all)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="with --checkpoint: resume from a directory autopar did not create (its metadata is a pickle: trust it first)")
    p.add_argument("--dtype", choices=("float32", "float64"), help=argparse.SUPPRESS)  # tests train in float64
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # the runtime (torch.distributed) loads only when a run is asked for: `autopar plan` never imports it
    from autopar.runtime.launch import Rendezvous, WorkerArgs, launch, preflight, printable, slurm_script
    from autopar.runtime.train import with_stages

    recipe, cluster = load_inputs(args)
    rdzv = Rendezvous(args.nnodes, args.node_rank, args.rdzv_endpoint, args.rdzv_id)
    rdzv.check()
    strategy = Strategy.parse(args.strategy) if args.strategy is not None else strategy_from_plan(recipe, cluster, args.plan or "1", rdzv.nnodes)
    steps = args.steps if args.steps is not None else recipe.steps_to_train()
    if steps < 1:
        raise InputError("--steps", steps, "expected an integer >= 1")
    if args.nproc is None and cluster is not None and strategy.devices > cluster.devices_per_node * rdzv.nnodes:
        have = cluster.devices_per_node * rdzv.nnodes
        raise InputError("--strategy", strategy.to_text(),
                         f"needs {strategy.devices} devices; {rdzv.nnodes} node(s) of cluster {cluster.name} have {have}: "
                         f"use a strategy of at most {have} devices, more --nnodes, or --nproc to oversubscribe on purpose")
    nproc = args.nproc if args.nproc is not None else max(1, strategy.devices // rdzv.nnodes)
    preflight(recipe, strategy, nproc, rdzv.nnodes)
    check_checkpoint(args, recipe, strategy, steps)
    strategy = with_stages(recipe, strategy, cluster or local_cluster(recipe, strategy, rdzv.nnodes))  # the predicted layout
    worker = WorkerArgs(args.recipe, strategy, steps, cluster=args.cluster, dtype=args.dtype, json=args.json,
                        checkpoint=args.checkpoint, save_every=args.save_every, keep=args.keep,
                        trust_checkpoint=args.trust_checkpoint)
    if args.print_command:
        print(printable(strategy, rdzv, worker))
        if rdzv.nnodes > 1:
            gpus = cluster is not None and not cluster.device.shared_memory
            write_text_atomic(args.slurm, slurm_script(strategy, rdzv, worker, gpus), "--slurm")
            print(f"autopar: wrote {args.slurm} (sbatch {args.slurm}: one torchrun per node, rendezvous on the first)", file=sys.stderr)
        return 0
    if args.checkpoint is None:
        return launch(strategy, rdzv, worker)
    from autopar.runtime.checkpoint import hold_lock

    with hold_lock(args.checkpoint):  # one run per checkpoint directory
        return launch(strategy, rdzv, worker)


def check_checkpoint(args: argparse.Namespace, recipe, strategy: Strategy, steps: int) -> None:
    """Reject a checkpoint that cannot be written or resumed before any process starts; say what resumes."""
    if args.checkpoint is None:
        if args.save_every is not None:
            raise InputError("--save-every", args.save_every, "needs --checkpoint DIR (where to save)")
        if args.keep is not None:
            raise InputError("--keep", args.keep, "needs --checkpoint DIR")
        return
    if args.keep is not None and args.keep < 1:
        raise InputError("--keep", args.keep, "expected an integer >= 1 (complete steps to keep)")
    from autopar.runtime import checkpoint

    start = checkpoint.check(args.checkpoint, recipe, strategy, steps, args.save_every, trust=args.trust_checkpoint)
    if start:
        where = checkpoint.step_dir(args.checkpoint, start)
        note = checkpoint.changes_note(checkpoint.read_meta(where), recipe)
        print(f"autopar: resuming from {where} (step {start} of {steps})" + (f"; warning: {note}" if note else ""), file=sys.stderr)


def strategy_from_plan(recipe: Recipe, cluster: Optional[Cluster], which: str, nnodes: int) -> Strategy:
    """`--plan N`: the planner's N-th plan (1-based) for this recipe and cluster.
    `--plan FILE[:N]`: plan N (default 1) of a saved plan, made for this recipe."""
    if which.isdigit():
        return _nth_plan_for_nodes(recipe, cluster or parse_cluster({"preset": LOCAL, "nodes": nnodes}), int(which), nnodes)
    path, sep, index = which.rpartition(":")
    if not sep or not index.isdigit():
        path, index = which, ""
    result = load_plan(path)
    if result.recipe_key and result.recipe_key != recipe_fingerprint(recipe):
        raise InputError("--plan", path, "was planned for another recipe (model, data or training differ); plan this recipe again")
    n = int(index or 1)
    if not 1 <= n <= len(result.plans):
        raise InputError("--plan", which, f"expected a plan number 1 .. {len(result.plans)} (the planner found {len(result.plans)} plans)")
    return result.plans[n - 1].strategy


def _nth_plan_for_nodes(recipe: Recipe, cluster: Cluster, n: int, nnodes: int) -> Strategy:
    """The n-th best plan that runs on `nnodes` nodes of this kind: planned for that many nodes,
    keeping the plans whose processes split evenly over them (plan 1 on one node may be
    threads=2, which one process cannot spread over two)."""
    from autopar.plan.planner import plan
    from autopar.techniques import Launch, check_devices

    if n < 1:
        raise InputError("--plan", n, "expected a plan number >= 1")
    if nnodes != cluster.nodes:
        cluster = replace(cluster, nodes=nnodes)
    result = plan(recipe, cluster, top_k=5 if nnodes == 1 else max(5, n) * 4)  # one node: the plans `autopar plan` lists
    runnable = [p.strategy for p in result.plans if nnodes == 1
                or check_devices(p.strategy, Launch(nproc=p.strategy.devices // nnodes // p.strategy.threads, nnodes=nnodes)) is None]
    if len(runnable) < n:
        where = "" if nnodes == 1 else f" that split over {nnodes} nodes"
        raise InputError("--plan", n, f"expected a plan number 1 .. {len(runnable)} (the planner found {len(runnable)} plans{where})")
    return runnable[n - 1]


def load_plan(path: str) -> PlanResult:
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as err:
        raise InputError("--plan", path, f"cannot read it ({err.strerror}); give a plan number or a saved plan file") from None
    except ValueError as err:
        raise InputError("--plan", path, f"not JSON ({err}); save a plan with autopar plan RECIPE --json > FILE") from None
    try:
        return PlanResult.from_dict(raw)
    except (KeyError, TypeError, ValueError) as err:
        raise InputError("--plan", path, f"not a complete saved plan ({type(err).__name__}: {err})") from None
