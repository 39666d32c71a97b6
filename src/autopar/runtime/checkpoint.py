"""Distributed checkpoints with torch.distributed.checkpoint (DCP): save every N steps, resume
from the latest, under the same strategy or another one.

    DIR/step-<k>/   DCP's files (one per rank, and .metadata)
                    autopar.json: the step, the model's parameter names and shapes, the
                    optimizer, the data stream, and every file's size and SHA-256; written
                    by rank 0 after every rank's files (to a temporary file, fsynced, then
                    renamed), so a step directory without it is incomplete and ignored, and
                    one whose files do not match it is damaged: resume takes the newest
                    intact step, chosen by rank 0 for every rank.
    DIR/.lock       held by the `autopar run` that uses DIR (pid, host): a second run on the
                    same directory is refused; a lock whose process is gone is taken over.

What is saved, under layout-free keys (the model's own FQNs, `layers.7.attn.q.weight`):
  model.<fqn>                         parameters and persistent buffers: this rank's shards
                                      (DTensors under FSDP2 / TP), from get_state_dict
  optim.state.<fqn>.<name>            optimizer state, and its hyperparameters under
  optim.param_groups.<fqn>.<hyper>    param_groups (get_state_dict's flattened form)
  scaler.<name>                       the fp16 loss scaler, if the recipe uses one
The step counter is the data stream's whole state: step s trains on the batch
data.py derives from (seed, s), under any strategy.

Three translations make a rank's keys layout-free:
  - a pipeline rank's chunks go to get_state_dict as one ModuleList; its index is dropped;
  - a weight tied across pipeline stages (GPT's head.out.weight = embed.tok.weight) is saved
    under its first name, which every layout can then find, whichever stage holds it;
  - a plain tensor holding part of its full tensor (the feature partition's columns, an
    expert-parallel rank's experts: Parallelized.local_slices) is saved whole, gathered
    over the ranks holding the other parts, and cut back to the rank's part on load.
DCP writes a tensor replicated on several ranks once. Loading reads into this rank's own
layout (DCP reshards), then set_state_dict hands the values to the model and optimizer.
The optimizer's state carries over; its hyperparameters (lr) are the recipe's.

Not checkpointed: local SGD, IST and Hogwild (see `unsupported`), and the dropout RNG
(masks after a resume differ from an uninterrupted run's, as they differ between strategies).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.optim import ZeroRedundancyOptimizer

from autopar.errors import InputError, RunStopped
from autopar.models import build_model
from autopar.models.init import tied_parameters
from autopar.runtime.names import clean_name
from autopar.runtime.parallelized import LocalSlice
from autopar.spec.recipe import Recipe
from autopar.spec.strategy import Strategy

META_FILE = "autopar.json"
LOCK_FILE = ".lock"
MARKER_FILE = ".autopar-checkpoint"  # written into every checkpoint directory autopar creates (check_trusted)
_STEP_DIR = re.compile(r"step-(\d+)")
_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


@dataclass(frozen=True)
class CheckpointOptions:
    directory: str
    save_every: Optional[int] = None  # steps between saves; None: at the end only
    keep: Optional[int] = None  # complete steps kept (the newest); None: all

    def due(self, done: int, total: int) -> bool:
        """Whether to save after `done` steps of `total`."""
        return done == total or (self.save_every is not None and done % self.save_every == 0)


# ------------------------------------------------------------------ directory and compatibility (no processes)


def step_dir(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"step-{step}"


def latest_step(directory: str | Path, verify: bool = False) -> Optional[int]:
    """The step of the newest complete checkpoint in `directory` (with `verify`: whose files
    all match the sizes and SHA-256 its autopar.json lists), or None."""
    root = Path(directory)
    if not root.is_dir():
        return None
    steps = sorted((int(m.group(1)) for p in root.iterdir() if (m := _STEP_DIR.fullmatch(p.name)) and (p / META_FILE).is_file()),
                   reverse=True)
    return next((k for k in steps if not verify or damage(step_dir(root, k)) is None), None)


def file_digests(where: Path) -> dict[str, list]:
    """name -> [bytes, sha256] of every file of a step directory but the marker."""
    out = {}
    for f in sorted(where.iterdir()):
        if f.is_file() and f.name != META_FILE and not f.name.endswith(".tmp"):
            h = hashlib.sha256()
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            out[f.name] = [f.stat().st_size, h.hexdigest()]
    return out


def damage(where: Path) -> Optional[str]:
    """What is wrong with a complete step directory's files, or None when all match."""
    try:
        listed = json.loads((where / META_FILE).read_text()).get("files")
    except (OSError, ValueError):
        return f"{META_FILE} unreadable"
    if not isinstance(listed, dict):
        return None  # written before checksums were recorded: nothing to verify
    for name, (size, _) in listed.items():
        f = where / name
        if not f.is_file():
            return f"{name} missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, {size} written"
    found = file_digests(where)
    bad = next((n for n, (_, d) in listed.items() if found.get(n, [0, ""])[1] != d), None)
    return f"{bad} does not match its checksum" if bad else None


def _write_atomic(path: Path, text: str) -> None:
    """Write, fsync, rename, fsync the folder: the file is either absent or whole."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def hold_lock(directory: str | Path) -> Iterator[None]:
    """DIR/.lock for the length of a run: a second run on DIR gets an InputError; a lock left
    by a process that no longer exists (on this host) is taken over."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    lock = root / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = _holder(lock)
            if holder is not None:
                raise InputError("--checkpoint", str(directory), f"is in use by another run (pid {holder['pid']} on {holder['host']}); "
                                                                  f"wait for it or use another directory") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _holder(lock: Path) -> Optional[dict]:
    """The lock's owner if it is alive (or on another host, where we cannot tell), else None."""
    try:
        holder = json.loads(lock.read_text())
        pid, host = int(holder["pid"]), str(holder["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable: half-written by a process that died
    if host != socket.gethostname():
        return holder
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return holder


def check_writable(directory: str | Path) -> None:
    """Find a directory we cannot write before training, not after."""
    root = Path(directory)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise InputError("--checkpoint", str(directory), f"cannot be written ({err.strerror or err}); give a writable directory") from None


def unsupported(s: Strategy) -> Optional[str]:
    """Why a strategy's state is not a model + optimizer that DCP can save, or None."""
    if s.is_async and s.threads > 1:
        return "Hogwild's workers share one model outside torch.distributed; --checkpoint supports the synchronous strategies"
    if s.is_async:
        return "local SGD replicas hold different parameters and optimizer states between averagings; --checkpoint supports the synchronous strategies"
    if s.subnet:
        return "IST redraws its subnetworks and optimizers every sync_every steps; --checkpoint supports the synchronous strategies"
    return None


def run_facts(recipe: Recipe, model: Optional[nn.Module] = None) -> dict[str, Any]:
    """What a checkpoint must agree with to be resumed: the saved names and shapes (from a meta
    copy of the model, tied aliases left out), the optimizer; and the data stream, for a warning."""
    model = model if model is not None else build_model(recipe.model, "meta").module
    aliases = {alias for names in tied_parameters(model) for alias in names[1:]}
    shapes = {name: list(t.shape) for name, t in model.state_dict().items() if name not in aliases}
    data = {"samples": recipe.data.samples, "loader": recipe.data.loader, "global_batch": recipe.training.global_batch, "seed": recipe.training.seed}
    return {"model": shapes, "optimizer": recipe.training.optimizer.value, "lr": recipe.training.lr, "data": data}


def check_trusted(root: Path, trust: bool) -> None:
    """Resume only from a directory autopar made (its MARKER_FILE) or one the user vouches for
    (--trust-checkpoint): DCP's .metadata is a pickle, and unpickling runs code."""
    marker = root / MARKER_FILE
    if marker.is_file():
        return
    foreign = [p.name for p in root.iterdir() if p.name not in (LOCK_FILE, MARKER_FILE) and not p.name.startswith(".probe-")]
    if foreign and not trust:
        raise InputError("--checkpoint", str(root), f"was not created by autopar (no {MARKER_FILE}; holds {', '.join(sorted(foreign)[:3])}): "
                                                    "checkpoint metadata is a pickle, which runs code when loaded; "
                                                    "pass --trust-checkpoint if you trust this directory")
    mark_created(root)


def mark_created(root: Path) -> None:
    """MARKER_FILE: this directory's checkpoints are autopar's (check_trusted)."""
    if not (root / MARKER_FILE).is_file():
        _write_atomic(root / MARKER_FILE, json.dumps({"created_by": "autopar", "host": socket.gethostname()}))


def checkpoint_bytes(recipe: Recipe) -> float:
    """About one checkpoint step of this run: every parameter and its optimizer states in fp32."""
    numel = sum(math.prod(shape) for shape in run_facts(recipe)["model"].values())
    return numel * 4.0 * (1 + recipe.training.optimizer.state_floats_per_param)


def check_free_space(root: Path, recipe: Recipe) -> None:
    """A full disk found before training, not at the first save."""
    need, free = checkpoint_bytes(recipe), shutil.disk_usage(root).free
    if free < need:
        raise InputError("--checkpoint", str(root), f"has {free / 1e9:.3g} GB free; one checkpoint of this run takes about "
                                                    f"{need / 1e9:.3g} GB (fp32 parameters and optimizer states): free space or use another directory")


def check(directory: str, recipe: Recipe, s: Strategy, steps: int, save_every: Optional[int], verify: bool = True,
          trust: bool = False) -> int:
    """The step a run with --checkpoint starts at (0: nothing to resume); InputError before
    anything is written if the directory, the strategy or the saved run does not fit.
    `verify`: read every file against its checksum (the launcher does; workers leave it to
    rank 0's resume, which verifies once for all ranks). `trust`: adopt a directory autopar
    did not create (check_trusted)."""
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise InputError("--checkpoint", directory, "is a file; expected a directory (created if missing) to hold step-<k>/ checkpoints")
    if save_every is not None and save_every < 1:
        raise InputError("--save-every", save_every, "expected an integer >= 1 (steps between checkpoints)")
    reason = unsupported(s)
    if reason:
        raise InputError("--checkpoint", s.to_text(), reason)
    check_writable(root)
    check_trusted(root, trust)
    check_free_space(root, recipe)
    newest, last = latest_step(root), latest_step(root, verify=verify)
    if newest is not None and newest != last:
        problem = damage(step_dir(root, newest))
        print(f"autopar: {step_dir(root, newest)} is damaged ({problem}); "
              + (f"resuming from step {last}" if last is not None else "no intact step: starting from step 0"), file=sys.stderr)
    if last is None:
        return 0
    where = str(step_dir(root, last))
    mismatch = _mismatch(read_meta(where), run_facts(recipe))
    if mismatch:
        raise InputError("--checkpoint", where, mismatch)
    if last >= steps:
        raise InputError("--steps", steps, f"{where} is already at step {last}; ask for more steps to train on")
    return last


def read_meta(where: str | Path) -> dict[str, Any]:
    path = Path(where) / META_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError("--checkpoint", str(path), f"unreadable ({err}); remove that step directory") from None


def _mismatch(saved: dict[str, Any], here: dict[str, Any]) -> Optional[str]:
    old, new = saved.get("model", {}), here["model"]
    for name in new:
        if name not in old:
            return f"holds another model: it has no {name} (saved {len(old)} tensors, this model has {len(new)})"
        if old[name] != new[name]:
            return f"holds another model: {name} has shape {tuple(old[name])} there, {tuple(new[name])} here"
    extra = next((n for n in old if n not in new), None)
    if extra:
        return f"holds another model: it has {extra}, which this model lacks"
    if saved.get("optimizer") != here["optimizer"]:
        return f"was trained with optimizer {saved.get('optimizer')}, this recipe uses {here['optimizer']}: its state cannot carry over"
    return None


def changes_note(saved: dict[str, Any], recipe: Recipe) -> Optional[str]:
    """A warning when the resumed run will not continue the saved one exactly: another
    data stream (other batches from step k on) or another learning rate (the recipe's applies)."""
    now = run_facts(recipe)
    was, here = {**saved.get("data", {}), "lr": saved.get("lr")}, {**now["data"], "lr": now["lr"]}
    changed = [f"{k} {was.get(k)} -> {here[k]}" for k in here if was.get(k) != here[k]]
    return f"the recipe changed since the checkpoint ({', '.join(changed)})" if changed else None


# ------------------------------------------------------------------ one rank's state (inside the process group)


@dataclass(frozen=True)
class _Piece:
    """A plain local tensor holding part of one dimension of its full tensor (the feature
    partition's columns, an expert-parallel rank's experts): saved whole."""

    part: LocalSlice
    ndim: int  # the parameter's dimensions: an optimizer state shaped like it is cut too, a step counter not
    gather: Callable[[torch.Tensor], torch.Tensor]  # collective over the ranks holding the other parts

    def matches(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor) and value.dim() == self.ndim

    def empty(self, local: torch.Tensor) -> torch.Tensor:
        shape = list(local.shape)
        shape[self.part.dim] = self.part.size
        return local.new_empty(shape)

    def cut(self, whole: torch.Tensor) -> torch.Tensor:
        return whole.narrow(self.part.dim, self.part.lo, self.part.hi - self.part.lo)


class RankState:
    """This rank's model chunks, optimizer and loss scaler, as DCP sees them."""

    def __init__(self, par, scaler, ties: list[list[str]]):
        self.parts = nn.ModuleList([c.module for c in par.chunks])
        opt = par.optimizer
        self.optimizer = opt.optim if isinstance(opt, ZeroRedundancyOptimizer) else opt  # ZeRO-1: this rank's shard
        self.scaler = scaler
        self.owner = {alias: names[0] for names in ties for alias in names[1:]}
        dims = {clean_name(n): p.dim() for c in par.chunks for n, p in c.module.named_parameters()}
        self.pieces = {name: _Piece(part, dims[name], par.gatherers[name]) for name, part in par.local_slices.items() if name in dims}

    def save(self, where: Path) -> None:
        local_model, local_optim = get_state_dict(self.parts, self.optimizer, options=_OPTIONS)
        dcp.save(self._saved_view(local_model, local_optim, whole=True), checkpoint_id=str(where))

    def load(self, where: Path, with_scaler: bool) -> None:
        recipe_hyper = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        local_model, local_optim = get_state_dict(self.parts, self.optimizer, options=_OPTIONS)
        view = self._saved_view(local_model, local_optim, whole=False, with_scaler=with_scaler)
        dcp.load(view, checkpoint_id=str(where))  # in place, resharded into this layout
        model = {k: self._local(self._name(k), view["model"][self._name(k)]) for k in local_model}
        optim = {}
        for k in local_optim:
            saved, name = self._optim_key(k, local_model)
            optim[k] = self._local(name, view["optim"][saved])
        set_state_dict(self.parts, self.optimizer, model_state_dict=model, optim_state_dict=optim)
        for group, hyper in zip(self.optimizer.param_groups, recipe_hyper):
            group.update(hyper)  # the state carries over, the recipe's lr applies
        if self.scaler is not None and with_scaler:
            self.scaler.load_state_dict(view["scaler"])

    # -------------------------------------------------------------- key translation

    def _name(self, local: str) -> str:
        """`<chunk>.<fqn>` -> the name the whole model gives it (a tie's first name)."""
        fqn = local.split(".", 1)[1]
        return self.owner.get(fqn, fqn)

    def _optim_key(self, key: str, local_model: dict) -> tuple[str, str]:
        """`state.<chunk>.<fqn>.<name>` -> (`state.<saved fqn>.<name>`, saved fqn)."""
        section, rest = key.split(".", 1)
        atoms = rest.split(".")
        for i in range(len(atoms) - 1, 0, -1):  # the longest parameter name first
            local = ".".join(atoms[:i])
            if local in local_model:
                name = self._name(local)
                return ".".join([section, name, *atoms[i:]]), name
        raise KeyError(f"optimizer state {key} names no parameter of this rank")

    def _saved_view(self, local_model: dict, local_optim: dict, whole: bool, with_scaler: bool = True) -> dict[str, Any]:
        """The state under saved keys; `whole`: gather the column pieces (save), else empty
        whole-size tensors to load into (load). A tie held twice by one rank is kept once."""
        model: dict[str, Any] = {}
        for key, value in local_model.items():
            name = self._name(key)
            if name not in model:
                model[name] = self._whole(name, value, whole)
        optim: dict[str, Any] = {}
        for key, value in local_optim.items():
            saved, name = self._optim_key(key, local_model)
            if saved not in optim:
                optim[saved] = self._whole(name, value, whole)
        view = {"model": model, "optim": optim}
        if self.scaler is not None and with_scaler:
            view["scaler"] = self.scaler.state_dict()
        return view

    def _whole(self, name: str, value: Any, whole: bool) -> Any:
        piece = self.pieces.get(name)
        if piece is None or not piece.matches(value):
            return value  # step counters and hyperparameters are the same on every rank
        return piece.gather(value) if whole else piece.empty(value)

    def _local(self, name: str, value: Any) -> Any:
        piece = self.pieces.get(name)
        return piece.cut(value).contiguous() if piece is not None and piece.matches(value) else value


# ------------------------------------------------------------------ save and resume


class Checkpointer:
    """Resume a run from DIR's latest checkpoint, and save it every N steps and at the end."""

    def __init__(self, options: CheckpointOptions, trainer, recipe: Recipe, strategy: Strategy):
        """`trainer`: a train.StandardTrainer (its `par` and `scaler`)."""
        self.options, self.strategy = options, strategy
        model = build_model(recipe.model, "meta").module  # names and shapes only
        self.state = RankState(trainer.par, trainer.scaler, tied_parameters(model))
        self.facts = run_facts(recipe, model)

    def resume(self) -> int:
        """Load the newest intact checkpoint into this rank's state; returns its step (0: none).
        Rank 0 chooses the step (checksums verified) and every rank loads that one."""
        step = latest_step(self.options.directory, verify=True) if not dist.is_initialized() or dist.get_rank() == 0 else None
        if dist.is_initialized():
            chosen = [step]
            dist.broadcast_object_list(chosen, src=0)
            step = chosen[0]
        if step is None:
            return 0
        where = step_dir(self.options.directory, step)
        self.state.load(where, with_scaler=read_meta(where).get("grad_scaler", False))
        return step

    def guard_finite(self, loss: torch.Tensor, step: int) -> None:
        """Stop before a non-finite state is saved: every rank learns whether any rank's loss
        (the last stage's, others report 0) is NaN or infinite."""
        bad = torch.tensor([0.0 if math.isfinite(float(loss)) else 1.0])
        if dist.is_initialized():
            dist.all_reduce(bad)
        if bad.item() > 0:
            newest = latest_step(self.options.directory)
            raise RunStopped(f"step {step}: the loss is not finite ({float(loss)} on this rank); stopped before saving that state "
                             f"(newest checkpoint: {step_dir(self.options.directory, newest) if newest is not None else 'none'})")

    def after_step(self, done: int, total: int) -> None:
        if self.options.due(done, total):
            self.save(done)

    def save(self, step: int) -> Path:
        """Every rank writes its shards; rank 0 then marks the step directory complete."""
        where = step_dir(self.options.directory, step)
        try:
            self.state.save(where)
        except (OSError, RuntimeError, CheckpointException) as err:  # a full or failing disk: DCP raises on every rank
            raise RunStopped(self._failed(where, err)) from None
        distributed = dist.is_initialized()
        if distributed:
            dist.barrier()  # every rank's files are written before they are hashed
        if not distributed or dist.get_rank() == 0:
            meta = {"step": step, "strategy": self.strategy.to_text(), "grad_scaler": self.state.scaler is not None, **self.facts,
                    "files": file_digests(where)}
            try:
                mark_created(Path(self.options.directory))
                _write_atomic(where / META_FILE, json.dumps(meta, indent=1))
            except OSError as err:
                raise RunStopped(self._failed(where, err)) from None
            self._retire(step)
        if distributed:
            dist.barrier()  # no rank looks for the latest step before it is complete
        return where

    def _failed(self, where: Path, err: BaseException) -> str:
        """One line for a save that failed: the cause (its first line, e.g. 'No space left on
        device'), and that the step stays incomplete, so resume skips it."""
        cause = next((line.strip() for line in str(getattr(err, "strerror", None) or err).splitlines() if line.strip()), type(err).__name__)
        newest = latest_step(self.options.directory)
        return (f"saving {where} failed ({cause[:200]}); it has no {META_FILE}, so resume skips it "
                f"(newest complete step: {newest if newest is not None else 'none'})")

    def _retire(self, newest: int) -> None:
        """Keep the newest `keep` complete steps (--keep); older ones are removed, oldest first."""
        keep = self.options.keep
        if keep is None:
            return
        root = Path(self.options.directory)
        complete = sorted(int(m.group(1)) for p in root.iterdir() if (m := _STEP_DIR.fullmatch(p.name)) and (p / META_FILE).is_file())
        for k in [k for k in complete if k != newest][: max(0, len(complete) - keep)]:
            shutil.rmtree(step_dir(root, k), ignore_errors=True)

    def describe(self, first: int) -> str:
        every = f"every {self.options.save_every} steps and at the end" if self.options.save_every else "at the end"
        since = f", resumed from step {first}" if first else ""
        return f"checkpoint(DCP to {self.options.directory} {every}{since})"
