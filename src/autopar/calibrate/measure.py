"""Microbenchmarks of the local machine. Each returns medians of repeated timings.

Compute: matmul FLOP/s at several shapes and thread counts. Memory: copy bandwidth
with one thread and with all. Dispatch: the fixed cost of one small operator.
Collectives: gloo (CPU) or nccl (GPU) all-reduce, all-gather, reduce-scatter and
send/recv at several sizes and rank counts, in real processes.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.device_mesh import init_device_mesh

from autopar.models import build_model
from autopar.profile.profiler import profile_model
from autopar.spec.enums import Precision
from autopar.spec.recipe import MLPSpec, parse_recipe
from autopar.techniques.data import apply as data_apply
from autopar.techniques.tensor import apply as tensor_apply


def _median_time(fn: Callable[[], None], repeats: int, max_seconds: float = 5.0) -> float:
    """Median of up to `repeats` timings after a warm-up, stopping early past max_seconds."""
    t = time.perf_counter()
    fn()  # warm up
    times, start = [time.perf_counter() - t], time.perf_counter()
    for _ in range(repeats):
        if time.perf_counter() - start > max_seconds:
            break
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:] or times)


def matmul_flops(n: int, dtype: torch.dtype, threads: int, repeats: int = 5) -> float:
    """FLOP/s of an n x n x n matmul with `threads` intra-op threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(n, n, dtype=torch.float32).to(dtype)
        b = torch.randn(n, n, dtype=torch.float32).to(dtype)
        t = _median_time(lambda: torch.mm(a, b), repeats)
    finally:
        torch.set_num_threads(old)
    return 2.0 * n**3 / t


def copy_bandwidth(nbytes: int, threads: int, repeats: int = 5) -> float:
    """Bytes/s moved (read + write) by a large tensor copy."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        src = torch.ones(nbytes // 4, dtype=torch.float32)
        dst = torch.empty_like(src)
        t = _median_time(lambda: dst.copy_(src), repeats)
    finally:
        torch.set_num_threads(old)
    return 2.0 * nbytes / t


def _mlp_step(width: int, depth: int, batch: int, threads: int, repeats: int = 5) -> float:
    """Seconds of one training step (forward, backward, SGD) of a Linear+ReLU stack."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, width), nn.ReLU())])
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        x = torch.randn(batch, width)

        def step():
            opt.zero_grad(set_to_none=True)
            model(x).pow(2).mean().backward()
            opt.step()

        return _median_time(step, repeats)
    finally:
        torch.set_num_threads(old)


# The probe: a recipe's model (built by autopar itself) that calibration times alone, under
# DDP and under FSDP2, and whose single-process step the peak is fitted to (cluster.py).
PROBE = {"model": {"family": "mlp", "input_dim": 256, "widths": [512] * 5, "classes": 10},
         "data": {"samples": 1280}, "training": {"global_batch": 128, "optimizer": "sgd", "precision": "fp32"}}


def probe_model() -> torch.nn.Module:
    """The probe MLP (6 Linears, 1.2 M parameters), initialised from seed 0 on the CPU."""
    return build_model(parse_recipe(PROBE).model, "cpu", torch.float32, seed=0).module


def _probe_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(128, 256, generator=gen), torch.randint(0, 10, (128,), generator=gen)


def _sgd_step(model: torch.nn.Module) -> Callable[[], None]:
    x, y = _probe_batch()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def probe_step_alone_s(repeats: int = 8) -> float:
    """The probe's training step in this process alone, one thread."""
    step = _sgd_step(probe_model())
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _median_time(step, repeats)
    finally:
        torch.set_num_threads(old)


def op_overhead_s() -> float:
    """Host seconds per operator of a real training step (dispatch, autograd, module calls):
    a 16-layer stack of 8-wide Linears does next to no arithmetic."""
    depth, width = 16, 8
    prof = profile_model(MLPSpec(family="mlp", input_dim=width, widths=[width] * (depth - 1), classes=width), Precision.FP32)
    ops = sum(layer.stats.forward_ops + layer.stats.backward_ops for layer in prof.layers)
    return _mlp_step(width, depth, 8, 1, repeats=30) / ops


def thread_efficiency(threads: int) -> float:
    """k threads deliver 1 + (k-1) e of one thread's speed on a mid-sized training step.
    Interleaved 1-thread and k-thread steps, best of each: a busy neighbour slows either."""
    if threads < 2:
        return 1.0
    ones, manys = [], []
    for _ in range(4):
        ones.append(_mlp_step(512, 4, 512, 1, repeats=3))
        manys.append(_mlp_step(512, 4, 512, threads, repeats=3))
    return max(0.0, min(1.0, (min(ones) / min(manys) - 1) / (threads - 1)))


@dataclass(frozen=True)
class CollectiveTimes:
    ranks: int
    sizes: tuple[int, ...]  # bytes
    all_reduce_s: tuple[float, ...]
    all_gather_s: tuple[float, ...]  # full (gathered) tensor of `size` bytes
    reduce_scatter_s: tuple[float, ...]
    send_recv_s: tuple[float, ...]
    tp_module_overhead_s: float = 0.0
    ddp_factor: float = 1.0
    fsdp_factor: float = 1.0
    concurrent_step_s: float = 0.0  # the probe MLP's step with every rank computing at once


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _all_gather(full, shard):
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(full, shard)


def _reduce_scatter(shard, full):
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    fn(shard, full)


def _worker(rank: int, ranks: int, port: int, sizes: list[int], repeats: int, out: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=ranks)
    result = {"all_reduce": [], "all_gather": [], "reduce_scatter": [], "send_recv": []}
    for size in sizes:
        n = max(ranks, size // 4 // ranks * ranks)
        full = torch.ones(n, device=device)
        shard = torch.ones(n // ranks, device=device)

        def timed(fn) -> float:
            dist.barrier()
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            return statistics.median(times[1:] if len(times) > 2 else times)

        result["all_reduce"].append(timed(lambda: dist.all_reduce(full)))
        result["all_gather"].append(timed(lambda: _all_gather(full, shard)))
        result["reduce_scatter"].append(timed(lambda: _reduce_scatter(shard, full)))

        def ping():
            if rank == 0:
                dist.send(full, 1)
            elif rank == 1:
                dist.recv(full, 0)

        result["send_recv"].append(timed(ping))
    result["tp_module_overhead_s"] = _tp_module_overhead(ranks, repeats) if backend == "gloo" else 0.0
    if backend == "gloo":
        result.update(_data_parallel_factors(repeats))
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def synced_median_s(fn: Callable[[], None], repeats: int, warmup: int = 2) -> float:
    """Median seconds of fn, every rank starting each repetition together (barrier)."""
    times = []
    for _ in range(repeats + warmup):
        dist.barrier()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times[warmup:])


def _data_parallel_factors(repeats: int) -> dict:
    """How much longer DDP and FSDP2 (ZeRO-3) make a step than their raw collectives take:
    bucket copies, hooks, parameter copy-in/out. The probe runs through the runtime's own
    apply functions (techniques/data/apply.py): (step with sync - step without) / (raw
    collective time)."""
    ranks = dist.get_world_size()
    n = max(8, repeats * 2)
    plain = probe_model()
    numel = sum(p.numel() for p in plain.parameters())
    t_plain = synced_median_s(_sgd_step(plain), n)
    t_ddp = synced_median_s(_sgd_step(data_apply.apply_ddp(probe_model(), None, torch.device("cpu"))), n)
    sharded = data_apply.apply_fsdp(probe_model(), init_device_mesh("cpu", (ranks,)), zero=3, mp_policy=None)
    t_fsdp = synced_median_s(_sgd_step(sharded), n)
    full, shard = torch.ones(numel // ranks * ranks), torch.ones(numel // ranks)
    t_ar = synced_median_s(lambda: dist.all_reduce(full), n)
    t_fsdp_raw = 2 * synced_median_s(lambda: _all_gather(full, shard), n) + synced_median_s(lambda: _reduce_scatter(shard, full), n)
    return {"ddp_factor": max(1.0, (t_ddp - t_plain) / t_ar), "fsdp_factor": max(1.0, (t_fsdp - t_plain) / t_fsdp_raw),
            "concurrent_step_s": t_plain}


def _tp_module_overhead(ranks: int, repeats: int) -> float:
    """Host seconds per tensor-parallel module per forward+backward: a tiny Megatron pair
    through the runtime's tensor-parallel apply (DTensor colwise + rowwise) against the same
    pair in plain PyTorch, less its two all-reduces, halved."""
    def pair():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 16 * ranks), nn.ReLU(), nn.Linear(16 * ranks, 16))

    x = torch.randn(4, 16, requires_grad=True)
    plain, split = pair(), pair()
    tensor_apply.apply_tensor_parallel(split, init_device_mesh("cpu", (ranks,)), {"0": "colwise", "2": "rowwise"}, False)
    small = torch.ones(16)

    n = max(10, repeats * 3)
    t_plain = synced_median_s(lambda: plain(x).sum().backward(), n, warmup=3)
    t_split = synced_median_s(lambda: split(x).sum().backward(), n, warmup=3)
    t_reduce = synced_median_s(lambda: dist.all_reduce(small), n, warmup=3)
    return max(0.0, (t_split - t_plain - 2 * t_reduce) / 2)


def collectives(ranks: int, sizes: list[int], repeats: int = 5) -> CollectiveTimes:
    """Run the collectives in `ranks` real processes (torch.multiprocessing, spawn)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "times.json")
        mp.spawn(_worker, args=(ranks, free_port(), sizes, repeats, out), nprocs=ranks, join=True)
        data = json.loads(Path(out).read_text())
    return CollectiveTimes(ranks, tuple(sizes), *(tuple(data[k]) for k in ("all_reduce", "all_gather", "reduce_scatter", "send_recv")),
                           tp_module_overhead_s=data.get("tp_module_overhead_s", 0.0),
                           ddp_factor=data.get("ddp_factor", 1.0), fsdp_factor=data.get("fsdp_factor", 1.0),
                           concurrent_step_s=data.get("concurrent_step_s", 0.0))
