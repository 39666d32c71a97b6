"""The torchrun command that runs a strategy, on one node or several.

One node: `torchrun --standalone --nproc-per-node P`. Several nodes: the same command
on every node with the c10d rendezvous (`--nnodes N --node-rank i --rdzv-backend c10d
--rdzv-endpoint HOST:PORT --rdzv-id ID`), so a plan printed here runs on a cluster
unchanged. P = dp * tp * pp / nnodes processes per node; with sync=sync each uses
`threads` intra-op threads (OMP_NUM_THREADS), with Hogwild it forks `threads` workers.
The recipe (and --cluster) path is written absolute: every node must see it there
(a shared filesystem, as multi-node torchrun jobs usually have). With c10d, torchrun
assigns node ranks at rendezvous (it ignores --node-rank, which a static rendezvous
would use); the node that gets global rank 0 prints the report.
`autopar run` runs torchrun's own entry (torch.distributed.run) in its process, which
saves starting a second interpreter; the workers use the current interpreter.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

from autopar import techniques
from autopar.calibrate.load import wait_policy_env
from autopar.errors import InputError
from autopar.profile.facts import ModelFacts
from autopar.profile.profiler import profile_recipe
from autopar.runtime.data import load_loader
from autopar.spec.strategy import Strategy

WORKER_MODULE = "autopar.cli.worker"


@dataclass(frozen=True)
class Rendezvous:
    nnodes: int = 1
    node_rank: int = 0
    endpoint: Optional[str] = None  # HOST:PORT of the c10d rendezvous (required with nnodes > 1)
    run_id: str = "autopar"

    def check(self) -> None:
        if self.nnodes > 1 and not self.endpoint:
            raise InputError("--rdzv-endpoint", None, f"required with --nnodes {self.nnodes}: HOST:PORT of node 0, e.g. 10.0.0.1:29500")
        if not 0 <= self.node_rank < self.nnodes:
            raise InputError("--node-rank", self.node_rank, f"expected 0 .. nnodes-1 = {self.nnodes - 1}")


@dataclass(frozen=True)
class WorkerArgs:
    recipe: str
    strategy: Strategy
    steps: int
    cluster: Optional[str] = None
    dtype: Optional[str] = None
    json: bool = False
    report: Optional[str] = None
    checkpoint: Optional[str] = None  # DCP directory (see checkpoint.py)
    save_every: Optional[int] = None
    keep: Optional[int] = None
    trust_checkpoint: bool = False

    def argv(self) -> list[str]:
        out = ["--recipe", str(Path(self.recipe).resolve()), "--strategy", self.strategy.to_text(), "--steps", str(self.steps)]
        if self.cluster:
            out += ["--cluster", str(Path(self.cluster).resolve())]
        if self.dtype:
            out += ["--dtype", self.dtype]
        if self.json:
            out.append("--json")
        if self.report:
            out += ["--report", self.report]
        if self.checkpoint:
            out += ["--checkpoint", str(Path(self.checkpoint).resolve())]
        if self.save_every is not None:
            out += ["--save-every", str(self.save_every)]
        if self.keep is not None:
            out += ["--keep", str(self.keep)]
        if self.trust_checkpoint:
            out += ["--trust-checkpoint"]
        return out


def processes_per_node(strategy: Strategy, rdzv: Rendezvous) -> int:
    return strategy.dp * strategy.cp * strategy.tp * strategy.pp // rdzv.nnodes


LAUNCHER_ENV = "AUTOPAR_LAUNCHER_PID"  # the process running torchrun's agent: workers end when it is gone
USER_PATH_ENV = "AUTOPAR_USER_PATH"  # the launch directory: workers append it to sys.path (autopar.cli.worker)


def worker_env(strategy: Strategy, here: bool = True) -> dict[str, str]:
    """Environment of every worker: its intra-op threads, and a safe module path. Python puts
    the current directory first on sys.path for `-m`, so a stray pydantic.py or torch.py
    there would run in every rank; PYTHONSAFEPATH drops it, and the worker appends the launch
    directory last, so the recipe's own modules there still import but never shadow a package.
    On busy cores intra-op threads sleep at barriers instead of spinning (calibrate/load.py):
    `here`, a launch on this machine now (a printed command runs elsewhere, later)."""
    threads = 1 if strategy.is_async else strategy.threads
    return {"OMP_NUM_THREADS": str(threads), **(wait_policy_env(threads) if here else {}), "PYTHONSAFEPATH": "1", USER_PATH_ENV: os.getcwd()}


def torchrun_args(strategy: Strategy, rdzv: Rendezvous, worker: WorkerArgs) -> list[str]:
    """torchrun's arguments (after the program name), then the worker module and its arguments."""
    nproc = ["--nproc-per-node", str(processes_per_node(strategy, rdzv))]
    if rdzv.nnodes == 1:
        where = ["--standalone"]
    else:
        where = ["--nnodes", str(rdzv.nnodes), "--node-rank", str(rdzv.node_rank), "--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv.endpoint, "--rdzv-id", rdzv.run_id]
    return [*where, *nproc, "--max-restarts", "0", "-m", WORKER_MODULE, *worker.argv()]


def printable(strategy: Strategy, rdzv: Rendezvous, worker: WorkerArgs) -> str:
    env = " ".join(f"{k}={'.' if k == USER_PATH_ENV else v}" for k, v in worker_env(strategy, here=False).items())  # "." on every node
    return f"{env} {shlex.join(['torchrun', *torchrun_args(strategy, rdzv, worker)])}"


def slurm_script(strategy: Strategy, rdzv: Rendezvous, worker: WorkerArgs, gpus: bool, port: int = 29500) -> str:
    """An sbatch script for a multi-node run: one torchrun per node (srun), the c10d
    rendezvous on the allocation's first node, the job id as the rendezvous id."""
    nproc = processes_per_node(strategy, rdzv)
    env = "\n".join(f"export {k}={shlex.quote(v if k != USER_PATH_ENV else '$SLURM_SUBMIT_DIR')}" for k, v in worker_env(strategy, here=False).items())
    env = env.replace("'$SLURM_SUBMIT_DIR'", '"$SLURM_SUBMIT_DIR"')
    torchrun = ["torchrun", "--nnodes", str(rdzv.nnodes), "--nproc-per-node", str(nproc), "--rdzv-backend", "c10d",
                "--rdzv-endpoint", '"$head:' + str(port) + '"', "--rdzv-id", '"$SLURM_JOB_ID"', "--max-restarts", "0",
                "-m", WORKER_MODULE, *(shlex.quote(a) for a in worker.argv())]
    lines = ["#!/bin/bash", f"# autopar: {strategy.to_text()} on {rdzv.nnodes} nodes x {nproc} processes",
             "#SBATCH --job-name=autopar", f"#SBATCH --nodes={rdzv.nnodes}", "#SBATCH --ntasks-per-node=1",
             *([f"#SBATCH --gpus-per-node={nproc}"] if gpus else []), "#SBATCH --exclusive",
             "set -euo pipefail", 'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)', env,
             "srun " + " ".join(torchrun)]
    return "\n".join(lines) + "\n"


def launch(strategy: Strategy, rdzv: Rendezvous, worker: WorkerArgs) -> int:
    """Run torchrun in the foreground; returns 0, or the exit code of the first failed worker."""
    os.environ.update(worker_env(strategy))
    os.environ[LAUNCHER_ENV] = str(os.getpid())  # the agent runs here: the workers' parent
    try:
        run(parse_args(torchrun_args(strategy, rdzv, worker)))
    except ChildFailedError as err:
        codes = [f.exitcode for f in err.failures.values()]
        return next((c for c in codes if c > 0), 1)
    return 0


def preflight(recipe, strategy: Strategy, nproc: int, nnodes: int, facts: Optional[ModelFacts] = None) -> None:
    """Every check that needs no process: strategy vs the model's facts (its meta-device
    profile), devices, the data loader's import."""
    facts = facts or profile_recipe(recipe).facts
    launch_facts = techniques.Launch(nproc=nproc, nnodes=nnodes)
    techniques.validate(strategy, facts, recipe.training.global_batch, recipe.training.precision, launch_facts)
    load_loader(recipe)
