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


def op_overhead_s(repeats: int = 2000) -> float:
    """Seconds of eager dispatch per small operator."""
    x = torch.ones(8)
    t = _median_time(lambda: [x.add(1.0) for _ in range(100)], 10)
    return t / 100


@dataclass(frozen=True)
class CollectiveTimes:
    ranks: int
    sizes: tuple[int, ...]  # bytes
    all_reduce_s: tuple[float, ...]
    all_gather_s: tuple[float, ...]  # full (gathered) tensor of `size` bytes
    reduce_scatter_s: tuple[float, ...]
    send_recv_s: tuple[float, ...]


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
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def collectives(ranks: int, sizes: list[int], repeats: int = 5) -> CollectiveTimes:
    """Run the collectives in `ranks` real processes (torch.multiprocessing, spawn)."""
    import json

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "times.json")
        mp.spawn(_worker, args=(ranks, free_port(), sizes, repeats, out), nprocs=ranks, join=True)
        data = json.loads(Path(out).read_text())
    return CollectiveTimes(ranks, tuple(sizes), *(tuple(data[k]) for k in ("all_reduce", "all_gather", "reduce_scatter", "send_recv")))
