"""Per-rank entry point, started by torchrun: `python -m autopar.runtime.worker --recipe R --strategy S --steps K [--checkpoint DIR]`.

Each rank initialises the process group (nccl with GPUs, else gloo), trains, and rank
0 prints the report (a table, or JSON with --json) and optionally writes it to
--report. The process ends with barrier, destroy_process_group, flush, os._exit:
gloo can otherwise abort a finished rank at interpreter exit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Any, Optional

import torch
import torch.distributed as dist

from autopar.errors import InputError
from autopar.spec.recipe import Recipe, load_recipe, load_yaml
from autopar.spec.strategy import Strategy

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="autopar.runtime.worker", description=__doc__.splitlines()[0])
    p.add_argument("--recipe", required=True)
    p.add_argument("--strategy", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--cluster", help="cluster YAML for the prediction (default: the recipe's, else cpu-local shaped like the run)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="train entirely in this dtype (tests: float64)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--report", help="also write the JSON report to this file")
    p.add_argument("--checkpoint", metavar="DIR", help="save DIR/step-<k>/ with DCP and resume from its latest step")
    p.add_argument("--save-every", type=int, metavar="N", help="with --checkpoint: also save every N steps")
    return p.parse_args(argv)


def pick_device() -> tuple[torch.device, str]:
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device, "nccl"
    return torch.device("cpu"), "gloo"


def torchrun_nodes() -> int:
    return int(os.environ.get("WORLD_SIZE", "1")) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def cluster_for(recipe: Recipe, strategy: Strategy, path: Optional[str]):
    """The cluster to predict for: --cluster, else the recipe's, else the cpu-local preset
    shaped like this run (torchrun's nodes, the strategy's devices per node)."""
    from autopar.spec.cluster import parse_cluster

    if path:
        return parse_cluster(load_yaml(path, "--cluster"))
    if recipe.cluster is not None:
        return parse_cluster(recipe.cluster)
    nnodes = torchrun_nodes()
    return parse_cluster({"preset": "cpu-local", "nodes": nnodes, "devices_per_node": max(1, strategy.devices // nnodes)})


def prediction_for(recipe: Recipe, strategy: Strategy, cluster_path: Optional[str]) -> Optional[Any]:
    from autopar.runtime.report import predict

    try:
        return predict(recipe, cluster_for(recipe, strategy, cluster_path), strategy)
    except InputError as err:
        print(f"autopar: no prediction for this strategy: {err}", file=sys.stderr)
        return None


def validate(recipe: Recipe, strategy: Strategy, args: argparse.Namespace) -> None:
    """The checks `autopar run` made, again: this module may be started by a hand-edited command."""
    from autopar.runtime.launch import preflight

    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    preflight(recipe, strategy, nproc=local_processes * strategy.threads, nnodes=torchrun_nodes())
    if args.checkpoint:
        from autopar.runtime.checkpoint import check

        check(args.checkpoint, recipe, strategy, args.steps, args.save_every)
    elif args.save_every is not None:
        raise InputError("--save-every", args.save_every, "needs --checkpoint DIR (where to save)")


def run(args: argparse.Namespace) -> int:
    from autopar.runtime.checkpoint import CheckpointOptions
    from autopar.runtime.report import format_report, report_dict
    from autopar.runtime.train import RunOptions, train

    recipe, strategy = load_recipe(args.recipe), Strategy.parse(args.strategy)
    validate(recipe, strategy, args)
    device, backend = pick_device()
    dist.init_process_group(backend)
    rank = dist.get_rank()
    prediction = prediction_for(recipe, strategy, args.cluster) if rank == 0 else None
    checkpoint = CheckpointOptions(args.checkpoint, args.save_every) if args.checkpoint else None
    options = RunOptions(steps=args.steps, dtype=DTYPES.get(args.dtype), progress=not args.json, checkpoint=checkpoint)
    result = train(recipe, strategy, options, device)
    if rank == 0:
        report = report_dict(result, strategy, prediction, nproc=strategy.devices)
        if args.report:
            with open(args.report, "w") as f:
                json.dump(report, f, indent=2)
        print(json.dumps(report, indent=2) if args.json else format_report(result, strategy, prediction), flush=True)
    return 0


def finish(code: int) -> None:
    """End without letting gloo abort at interpreter exit."""
    if dist.is_initialized() and code == 0:
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    try:
        code = run(args)
    except InputError as err:
        print(f"autopar: error: {err}", file=sys.stderr)
        code = 2
    except Exception:  # noqa: BLE001 - a failed rank prints its traceback and exits non-zero
        traceback.print_exc()
        code = 1
    except BaseException as err:  # DCP's CheckpointException derives from BaseException
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        traceback.print_exc()
        code = 1
    finish(code)


if __name__ == "__main__":
    main()
