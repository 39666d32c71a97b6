"""Microbenchmarks of the local machine. Each returns medians of repeated timings.

Compute: matmul FLOP/s at several shapes and thread counts. Memory: copy bandwidth
with one thread and with all. Dispatch: the fixed cost of one small operator.
Collectives: gloo (CPU) or nccl (GPU) all-reduce, all-gather, reduce-scatter and
send/recv at several sizes and rank counts, in real processes.
"""

from __future__ import annotations

import os
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


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
    from torch import nn

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


def probe_step_alone_s(repeats: int = 8) -> float:
    """The data-parallel probe's MLP step (see _data_parallel_factors) in this process alone."""
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(*[m for i in range(5) for m in (nn.Linear(512 if i else 256, 512), nn.ReLU())], nn.Linear(512, 10))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(128, 256), torch.randint(0, 10, (128,))

    def step():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _median_time(step, repeats)
    finally:
        torch.set_num_threads(old)


def op_overhead_s() -> float:
    """Host seconds per operator of a real training step (dispatch, autograd, module calls):
    a 16-layer stack of 8-wide Linears does next to no arithmetic."""
    from autopar.profile.profiler import profile_model
    from autopar.spec.enums import Precision
    from autopar.spec.recipe import MLPSpec

    depth, width = 16, 8
    prof = profile_model(MLPSpec(family="mlp", input_dim=width, widths=[width] * (depth - 1), classes=width), Precision.FP32)
    ops = sum(l.stats.forward_ops + l.stats.backward_ops for l in prof.layers)
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
    import torch.distributed as dist

    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(full, shard)


def _reduce_scatter(shard, full):
    import torch.distributed as dist

    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    fn(shard, full)


def _worker(rank: int, ranks: int, port: int, sizes: list[int], repeats: int, out: str) -> None:
    import json

    import torch.distributed as dist

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
    import torch.distributed as dist

    times = []
    for _ in range(repeats + warmup):
        dist.barrier()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times[warmup:])


def _data_parallel_factors(repeats: int) -> dict:
    """How much longer DDP and FSDP2 (ZeRO-3) make a step than their raw collectives
    take: bucket copies, hooks, parameter copy-in/out. Measured on a 5-layer MLP
    (1.2 M parameters): (step with sync - step without) / (raw collective time)."""
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel as DDP

    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(*[m for i in range(5) for m in (nn.Linear(512 if i else 256, 512), nn.ReLU())], nn.Linear(512, 10))

    x, y = torch.randn(128, 256), torch.randint(0, 10, (128,))

    def step_time(model) -> float:
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)

        def step():
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        return synced_median_s(step, max(8, repeats * 2))

    plain = mlp()
    numel = sum(p.numel() for p in plain.parameters())
    t_plain = step_time(plain)
    t_ddp = step_time(DDP(mlp()))
    sharded = mlp()
    for layer in sharded:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(sharded)
    t_fsdp = step_time(sharded)
    ranks = dist.get_world_size()
    full, shard = torch.ones(numel // ranks * ranks), torch.ones(numel // ranks)

    n = max(8, repeats * 2)
    t_ar = synced_median_s(lambda: dist.all_reduce(full), n)
    t_fsdp_raw = 2 * synced_median_s(lambda: _all_gather(full, shard), n) + synced_median_s(lambda: _reduce_scatter(shard, full), n)
    return {"ddp_factor": max(1.0, (t_ddp - t_plain) / t_ar), "fsdp_factor": max(1.0, (t_fsdp - t_plain) / t_fsdp_raw),
            "concurrent_step_s": t_plain}


def _tp_module_overhead(ranks: int, repeats: int) -> float:
    """Host seconds per tensor-parallel module per forward+backward: a tiny Megatron pair
    under DTensor (ColwiseParallel, RowwiseParallel) against the same pair in plain PyTorch,
    less its two all-reduces, halved."""
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    def pair():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 16 * ranks), nn.ReLU(), nn.Linear(16 * ranks, 16))

    x = torch.randn(4, 16, requires_grad=True)
    plain, split = pair(), pair()
    parallelize_module(split, init_device_mesh("cpu", (ranks,)), {"0": ColwiseParallel(), "2": RowwiseParallel()})
    small = torch.ones(16)

    n = max(10, repeats * 3)
    t_plain = synced_median_s(lambda: plain(x).sum().backward(), n, warmup=3)
    t_split = synced_median_s(lambda: split(x).sum().backward(), n, warmup=3)
    t_reduce = synced_median_s(lambda: dist.all_reduce(small), n, warmup=3)
    return max(0.0, (t_split - t_plain - 2 * t_reduce) / 2)


def collectives(ranks: int, sizes: list[int], repeats: int = 5) -> CollectiveTimes:
    """Run the collectives in `ranks` real processes (torch.multiprocessing, spawn)."""
    import json

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "times.json")
        mp.spawn(_worker, args=(ranks, free_port(), sizes, repeats, out), nprocs=ranks, join=True)
        data = json.loads(Path(out).read_text())
    return CollectiveTimes(ranks, tuple(sizes), *(tuple(data[k]) for k in ("all_reduce", "all_gather", "reduce_scatter", "send_recv")),
                           tp_module_overhead_s=data.get("tp_module_overhead_s", 0.0),
                           ddp_factor=data.get("ddp_factor", 1.0), fsdp_factor=data.get("fsdp_factor", 1.0),
                           concurrent_step_s=data.get("concurrent_step_s", 0.0))
