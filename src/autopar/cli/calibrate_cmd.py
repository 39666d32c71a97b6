"""`autopar calibrate [--out cluster.yaml]`: measure this machine and write a cluster file."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import yaml

GB = 1e9


def register(subparsers) -> None:
    p = subparsers.add_parser("calibrate", help="measure this machine (compute, memory, collectives) into a cluster file")
    p.add_argument("--out", default="cluster.yaml", help="where to write the cluster YAML (default cluster.yaml)")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats (for tests)")
    p.set_defaults(func=run)


class Progress:
    def __init__(self, total: int):
        self.total, self.done = total, 0

    def step(self, label: str) -> None:
        self.done += 1
        width = 30
        filled = int(width * self.done / self.total)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {label:<40}")
        sys.stderr.flush()
        if self.done == self.total:
            sys.stderr.write("\n")


def run(args) -> int:
    from autopar.errors import InputError

    out = Path(args.out)
    if out.exists() and out.is_dir():
        raise InputError("--out", str(out), "is a directory; give a file path")
    if not out.parent.exists():
        raise InputError("--out", str(out), f"its folder {out.parent} does not exist")
    data = measure_cluster(quick=args.quick)
    text = yaml.safe_dump(data, sort_keys=False)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(text)  # written whole, then renamed: never a half-written file
    os.replace(tmp.name, out)
    print(text, end="")
    print(f"wrote {out}")
    return 0


def measure_cluster(quick: bool = False) -> dict:
    import torch

    from autopar.calibrate import fit, measure
    from autopar.cost.efficiency import DEFAULT as EFF

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    shapes = (256, 1024) if quick else (256, 512, 1024, 2048)
    sizes = [4096, 262144, 2 << 20] if quick else [4096, 65536, 1 << 20, 8 << 20, 32 << 20]
    rank_counts = [2] if quick or cores < 2 else [2, 4]
    progress = Progress(len(shapes) + 3 + 3 + len(rank_counts))
    fp32 = {}
    for n in shapes:
        fp32[n] = measure.matmul_flops(n, torch.float32, 1, repeats=3 if quick else 5)
        progress.step(f"matmul fp32 {n}^3, 1 thread")
    big = shapes[-1]
    bf16 = measure.matmul_flops(512, torch.bfloat16, 1, repeats=3)  # slow on CPUs without bf16 units
    progress.step("matmul bf16 512^3")
    thread_eff = measure.thread_efficiency(cores)
    progress.step(f"training step, 1 vs {cores} threads")
    overhead = measure.op_overhead_s()
    progress.step("operator dispatch")
    bw_one = measure.copy_bandwidth(64 << 20 if quick else 256 << 20, 1)
    progress.step("memory bandwidth, 1 thread")
    bw_all = measure.copy_bandwidth(64 << 20 if quick else 256 << 20, cores)
    progress.step(f"memory bandwidth, {cores} threads")
    host = _host_memory_bytes()
    alone = measure.probe_step_alone_s()
    progress.step("host memory, probe step alone")
    links = {}
    for ranks in rank_counts:
        times = measure.collectives(ranks, sizes, repeats=3 if quick else 7)
        links[ranks] = times
        progress.step(f"collectives, {ranks} processes")
    two = links[rank_counts[0]]
    ar = fit.fit_alpha_beta(two.sizes, two.all_reduce_s)
    ag = fit.fit_alpha_beta(two.sizes, two.all_gather_s)
    bandwidth, latency = fit.link_from_all_reduce(ar, two.ranks, EFF)
    best = max(fp32.values())
    link = {"bandwidth_GBps": round(bandwidth / GB, 4), "latency_us": round(latency * 1e6, 2),
            "gather_factor": round(fit.gather_slowdown(ar, ag, two.ranks), 3),
            "ddp_factor": round(two.ddp_factor, 3), "fsdp_factor": round(two.fsdp_factor, 3)}
    data = {
        "device": {
            "name": "cpu-calibrated",
            "memory_GB": round(host / cores / GB * 0.9, 2),
            "peak_tflops": {"fp32": round(best / EFF.gemm_max / 1e12, 5), "bf16": round(bf16 / EFF.gemm_max / 1e12, 5),
                            "fp16": round(best / EFF.gemm_max / 1e12 / 4, 5)},
            "memory_bandwidth_GBps": round(bw_one / EFF.memory_bandwidth / GB, 3),
            "shared_memory": True,
            "op_overhead_us": round(overhead * 1e6, 2),
            "thread_efficiency": round(thread_eff, 3),
            "comm_overlap": 0.0,
            "concurrency_efficiency": round(min(1.0, alone / two.concurrent_step_s), 3) if two.concurrent_step_s else 1.0,
            "tp_module_overhead_us": round(two.tp_module_overhead_s * 1e6, 1),
            "source": f"autopar calibrate: 1-thread matmul {best / 1e9:.1f} GFLOP/s fp32 (n={max(fp32, key=fp32.get)}), "
                      f"{bf16 / 1e9:.1f} bf16; copy {bw_one / GB:.1f} GB/s (1 thread), {bw_all / GB:.1f} GB/s ({cores}); "
                      f"efficiency constants divided out",
        },
        "nodes": 1,
        "devices_per_node": cores,
        "intra_node": link,
        "inter_node": dict(link),
        "host_memory_GB": round(host / GB, 2),
        "node_memory_bandwidth_GBps": round(bw_all / EFF.memory_bandwidth / GB, 3),
        "source": "measured by autopar calibrate; collectives (median s): "
                  + "; ".join(f"{r} ranks all_reduce {[round(t, 6) for t in c.all_reduce_s]} at {list(c.sizes)} B" for r, c in links.items()),
    }
    return _fit_reference_step(data, alone)


# The data-parallel probe's model and batch (calibrate/measure.py), as a recipe.
PROBE = {"model": {"family": "mlp", "input_dim": 256, "widths": [512] * 4, "classes": 10},
         "data": {"samples": 1280}, "training": {"global_batch": 128, "optimizer": "sgd", "precision": "fp32"}}


def _fit_reference_step(data: dict, measured_s: float) -> dict:
    """Scale the device's peak so the cost model reproduces a whole measured training step
    (the probe MLP, one process): small CPU GEMMs run below the large-matmul rate the
    peak comes from. The scale is written into the file's source line."""
    from autopar.cost.estimate import CostModel
    from autopar.spec.cluster import parse_cluster
    from autopar.spec.recipe import parse_recipe
    from autopar.spec.strategy import Strategy

    recipe = parse_recipe({**PROBE, "cluster": None})
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
