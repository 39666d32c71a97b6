"""Per-rank entry point, started by torchrun: `python -m autopar.cli.worker --recipe R --strategy S --steps K [--checkpoint DIR]`.

Each rank initialises the process group (nccl with GPUs, else gloo), trains
(autopar.runtime.train, which returns records), and rank 0 prints the report (a table,
or JSON with --json) and optionally writes it to --report. The process ends with
barrier, destroy_process_group, flush, os._exit: gloo can otherwise abort a finished rank
at interpreter exit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from typing import Optional

import torch
import torch.distributed as dist

from autopar.cli.report import format_report, report_dict
from autopar.cost.estimate import Estimate
from autopar.cost.model import CostModel
from autopar.errors import InputError, RunStopped
from autopar.runtime import checkpoint
from autopar.runtime.launch import LAUNCHER_ENV, USER_PATH_ENV, preflight
from autopar.runtime.train import RunOptions, train, with_stages
from autopar.spec.cluster import Cluster, local_cluster, parse_cluster
from autopar.spec.recipe import Recipe, load_recipe, load_yaml
from autopar.spec.strategy import Strategy

DTYPES = {"float32": torch.float32, "float64": torch.float64}
if os.environ.get(USER_PATH_ENV):  # the launch directory, after every installed package (runtime/launch.py worker_env)
    sys.path.append(os.environ[USER_PATH_ENV])


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="autopar.cli.worker", description=__doc__.splitlines()[0])
    p.add_argument("--recipe", required=True)
    p.add_argument("--strategy", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--cluster", help="cluster YAML for the prediction (default: the recipe's, else this machine, local, shaped like the run)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="train entirely in this dtype (tests: float64)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--report", help="also write the JSON report to this file")
    p.add_argument("--checkpoint", metavar="DIR", help="save DIR/step-<k>/ with DCP and resume from its latest step")
    p.add_argument("--save-every", type=int, metavar="N", help="with --checkpoint: also save every N steps")
    p.add_argument("--keep", type=int, metavar="K", help="with --checkpoint: keep the newest K complete steps")
    p.add_argument("--trust-checkpoint", action="store_true", help="with --checkpoint: adopt a directory autopar did not create")
    return p.parse_args(argv)


def pick_device() -> tuple[torch.device, str]:
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device, "nccl"
    return torch.device("cpu"), "gloo"


def torchrun_nodes() -> int:
    return int(os.environ.get("WORLD_SIZE", "1")) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def cluster_for(recipe: Recipe, strategy: Strategy, path: Optional[str]) -> Cluster:
    """The cluster to predict for: --cluster, else the recipe's, else this machine (local) shaped like this run."""
    if path:
        return parse_cluster(load_yaml(path, "--cluster"))
    return local_cluster(recipe, strategy, torchrun_nodes())


def prediction_for(recipe: Recipe, strategy: Strategy, cluster: Cluster) -> tuple[Optional[Estimate], Optional[str]]:
    """The cost model's estimate of the run, or why there is none (the strategy does not fit the
    cluster file, or the cost model does not price it)."""
    try:
        return CostModel.for_recipe(recipe, cluster).estimate(strategy), None
    except InputError as err:
        return None, str(err)


def validate(recipe: Recipe, strategy: Strategy, args: argparse.Namespace) -> None:
    """The checks `autopar run` made, again: this module may be started by a hand-edited command."""
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    preflight(recipe, strategy, nproc=local_processes * strategy.threads, nnodes=torchrun_nodes())
    if args.checkpoint:
        checkpoint.check(args.checkpoint, recipe, strategy, args.steps, args.save_every, verify=False, trust=args.trust_checkpoint)
    elif args.save_every is not None:
        raise InputError("--save-every", args.save_every, "needs --checkpoint DIR (where to save)")


def progress(done: int, total: int, seconds: float) -> None:
    if dist.get_rank() == 0:
        print(f"step {done}/{total}: {seconds:.3f} s", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    recipe, strategy = load_recipe(args.recipe), Strategy.parse(args.strategy)
    validate(recipe, strategy, args)
    cluster = cluster_for(recipe, strategy, args.cluster)
    strategy = with_stages(recipe, strategy, cluster)  # the layout the prediction is for
    device, backend = pick_device()
    dist.init_process_group(backend)
    rank = dist.get_rank()
    prediction, why_none = prediction_for(recipe, strategy, cluster) if rank == 0 else (None, None)
    options = RunOptions(steps=args.steps, dtype=DTYPES.get(args.dtype), on_step=None if args.json else progress, cluster=cluster,
                         checkpoint=checkpoint.CheckpointOptions(args.checkpoint, args.save_every, args.keep) if args.checkpoint else None)
    result = train(recipe, strategy, options, device)
    if rank == 0:
        report = report_dict(result, strategy, prediction, nproc=strategy.devices, why_no_prediction=why_none)
        if args.report:
            with open(args.report, "w") as f:
                json.dump(report, f, indent=2)
        print(json.dumps(report, indent=2) if args.json else format_report(result, strategy, prediction, why_none), flush=True)
    return 0


def finish(code: int) -> None:
    """End without letting gloo abort at interpreter exit."""
    if dist.is_initialized() and code == 0:
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def watch_parent(period_s: float = 1.0) -> None:
    """End this rank when its launcher dies: a torchrun agent killed with SIGKILL cannot stop
    its workers, which would otherwise train (and write checkpoints) unsupervised. A daemon
    thread sees the parent change (re-parented to init or a subreaper) and exits the process.
    The parent is the launcher's pid when `autopar run` set it (a rank started after its
    launcher died would otherwise take init for its parent), else the parent at start."""
    parent = int(os.environ.get(LAUNCHER_ENV) or os.getppid())

    def watch() -> None:
        while True:
            if os.getppid() != parent:  # checked at once, then every period
                print("autopar: the launcher died; stopping this rank", file=sys.stderr, flush=True)
                os._exit(1)
            time.sleep(period_s)

    threading.Thread(target=watch, name="autopar-parent-watch", daemon=True).start()


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    watch_parent()
    try:
        code = run(args)
    except InputError as err:
        print(f"autopar: error: {err}", file=sys.stderr)
        code = 2
    except RunStopped as err:
        print(f"autopar: stopped: {err}", file=sys.stderr)
        code = 1
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
