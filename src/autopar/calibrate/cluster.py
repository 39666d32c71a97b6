"""Measure this machine and express it as a cluster file (`autopar calibrate`).

Hardware (matmul peak, copy bandwidth, collectives) and the framework on it
(dispatch per operator, thread and concurrency efficiency, DTensor module overhead,
DDP/FSDP synchronisation factors) become the cluster YAML's numbers, with the cost
model's efficiency constants divided out so that its formulas reproduce the
measurements. The peak is finally fitted to one measured training step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from autopar.calibrate import fit, measure
from autopar.cost.efficiency import DEFAULT as EFF
from autopar.cost.model import CostModel
from autopar.spec.cluster import parse_cluster
from autopar.spec.recipe import parse_recipe
from autopar.spec.strategy import Strategy

GB = 1e9


Progress = Callable[[int, int, str], None]  # (done, total, label) after each measurement: the CLI draws a bar

@dataclass(frozen=True)
class Compute:
    fp32: dict  # n -> FLOP/s of one thread
    bf16: float
    thread_efficiency: float
    op_overhead_s: float
    bandwidth_one_Bps: float
    bandwidth_all_Bps: float
    probe_step_s: float  # the data-parallel probe's step, this process alone


def measure_compute(cores: int, quick: bool, progress: Callable[[str], None]) -> Compute:
    fp32 = {}
    for n in (256, 1024) if quick else (256, 512, 1024, 2048):
        fp32[n] = measure.matmul_flops(n, torch.float32, 1, repeats=3 if quick else 5)
        progress(f"matmul fp32 {n}^3, 1 thread")
    bf16 = measure.matmul_flops(512, torch.bfloat16, 1, repeats=3)  # slow on CPUs without bf16 units
    progress("matmul bf16 512^3")
    threads = measure.thread_efficiency(cores)
    progress(f"training step, 1 vs {cores} threads")
    overhead = measure.op_overhead_s()
    progress("operator dispatch")
    size = 64 << 20 if quick else 256 << 20
    one, all_ = measure.copy_bandwidth(size, 1), measure.copy_bandwidth(size, cores)
    progress("memory bandwidth, 1 and all threads")
    probe = measure.probe_step_alone_s()
    progress("probe step alone")
    return Compute(fp32, bf16, threads, overhead, one, all_, probe)


def measure_cluster(quick: bool = False, on_progress: Optional[Progress] = None) -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    sizes = [4096, 262144, 2 << 20] if quick else [4096, 65536, 1 << 20, 8 << 20, 32 << 20]
    rank_counts = [2] if quick or cores < 2 else [2, 4]
    total, done = (2 if quick else 4) + 5 + len(rank_counts), [0]

    def progress(label: str) -> None:
        done[0] += 1
        if on_progress:
            on_progress(done[0], total, label)

    compute = measure_compute(cores, quick, progress)
    links = {}
    for ranks in rank_counts:
        links[ranks] = measure.collectives(ranks, sizes, repeats=3 if quick else 7)
        progress(f"collectives, {ranks} processes")
    data = cluster_dict(compute, links, cores)
    return _fit_reference_step(data, compute.probe_step_s)


def cluster_dict(c: Compute, links: dict, cores: int) -> dict:
    two = links[min(links)]
    ar = fit.fit_alpha_beta(two.sizes, two.all_reduce_s)
    ag = fit.fit_alpha_beta(two.sizes, two.all_gather_s)
    bandwidth, latency = fit.link_from_all_reduce(ar, two.ranks, EFF)
    best = max(c.fp32.values())
    peak = best / EFF.gemm_max / 1e12
    link = {"bandwidth_GBps": round(bandwidth / GB, 4), "latency_us": round(latency * 1e6, 2),
            "gather_factor": round(fit.gather_slowdown(ar, ag, two.ranks), 3),
            "ddp_factor": round(two.ddp_factor, 3), "fsdp_factor": round(two.fsdp_factor, 3)}
    host = _host_memory_bytes()
    device = {
        "name": "cpu-calibrated",
        "memory_GB": round(host / cores / GB * 0.9, 2),
        "peak_tflops": {"fp32": round(peak, 5), "bf16": round(c.bf16 / EFF.gemm_max / 1e12, 5), "fp16": round(peak / 4, 5)},
        "memory_bandwidth_GBps": round(c.bandwidth_one_Bps / EFF.memory_bandwidth / GB, 3),
        "shared_memory": True,
        "op_overhead_us": round(c.op_overhead_s * 1e6, 2),
        "thread_efficiency": round(c.thread_efficiency, 3),
        "comm_overlap": 0.0,
        "concurrency_efficiency": round(min(1.0, c.probe_step_s / two.concurrent_step_s), 3) if two.concurrent_step_s else 1.0,
        "tp_module_overhead_us": round(two.tp_module_overhead_s * 1e6, 1),
        "source": f"autopar calibrate: 1-thread matmul {best / 1e9:.1f} GFLOP/s fp32 (n={max(c.fp32, key=c.fp32.get)}), "
                  f"{c.bf16 / 1e9:.1f} bf16; copy {c.bandwidth_one_Bps / GB:.1f} GB/s (1 thread), "
                  f"{c.bandwidth_all_Bps / GB:.1f} GB/s ({cores}); efficiency constants divided out",
    }
    return {
        "device": device, "nodes": 1, "devices_per_node": cores, "intra_node": link, "inter_node": dict(link),
        "host_memory_GB": round(host / GB, 2),
        "node_memory_bandwidth_GBps": round(c.bandwidth_all_Bps / EFF.memory_bandwidth / GB, 3),
        "source": "measured by autopar calibrate; collectives (median s): "
                  + "; ".join(f"{r} ranks all_reduce {[round(t, 6) for t in t_.all_reduce_s]} at {list(t_.sizes)} B" for r, t_ in links.items()),
    }


def _fit_reference_step(data: dict, measured_s: float) -> dict:
    """Scale the device's peak so the cost model reproduces a whole measured training step
    (the probe MLP, one process): small CPU GEMMs run below the large-matmul rate the
    peak comes from. The scale is written into the file's source line."""
    recipe = parse_recipe({**measure.PROBE, "cluster": None})
    predicted = CostModel.for_recipe(recipe, parse_cluster(data)).estimate(Strategy()).step_time_s
    scale = predicted / measured_s if measured_s > 0 else 1.0
    peaks = data["device"]["peak_tflops"]
    for key in peaks:
        peaks[key] = round(peaks[key] * scale, 6)
    data["device"]["source"] += f"; peak scaled x{scale:.3f} to reproduce a measured MLP step ({measured_s * 1e3:.1f} ms)"
    return data


def _host_memory_bytes() -> float:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return float(pages * size)
    except (ValueError, OSError, AttributeError):
        return 8 * GB
