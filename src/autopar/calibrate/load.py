"""How busy this machine's cores are now, and what that does to shared-memory workers.

Other processes on the cores change what a plan gets, and not by a simple share of the
cores. Measured on this project's 2-core machine with one core kept busy by another
process (demo GPT, `autopar demo`, 2026-12-07):

  one process                 114 ms idle   112 ms loaded  (it keeps a core)
  2 DDP processes              83 ms idle   124-190 ms     (each waits for the descheduled one)
  1 process, 2 threads         70 ms idle   3.7 s spinning, 0.14 s with OMP_WAIT_POLICY=PASSIVE

So where the cluster is this machine (`cluster: local`) the busy cores are sampled when
planning (/proc/stat), counted in whole cores, and under load the two load-sensitive
numbers of the calibration are measured again on the spot, as a run would see them:
the thread efficiency (k threads against one, with PASSIVE waits, as runtime/launch.py
then launches) and the concurrency efficiency (the node's processes stepping together,
each step ended by a barrier, as synchronous data parallelism is). The cost model reads
them as it reads the idle calibration's (cost/model.py `rate`).
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

STAT = Path("/proc/stat")
IDLE_FIELDS = (3, 4)  # /proc/stat cpu line: user nice system idle iowait irq softirq steal ...
WINDOW_S = 0.3  # sampling window of busy_cores()
PROBE_BUDGET_S = 0.6  # each on-the-spot measurement (after starting a process and importing torch: ~1-2 s)
# Threads that spin at a barrier while a sibling is descheduled waste the core it needs
# (3.7 s above); sleeping waits cost 1.8x when idle (0.126 s against 0.070), so only on busy cores
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}
BARRIER_TIMEOUT_S = 20.0  # a probe process that died leaves the others' barrier broken, not hung


def _jiffies() -> Optional[tuple[int, int]]:
    """(busy, total) jiffies of all cores since boot; steal (a hypervisor running another
    guest on our core) counts as busy. None where /proc/stat is not readable."""
    try:
        fields = [int(x) for x in STAT.read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return None
    idle = sum(fields[i] for i in IDLE_FIELDS)
    return sum(fields) - idle, sum(fields)


def cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def busy_cores(window_s: float = WINDOW_S) -> Optional[float]:
    """Cores kept busy by other processes, averaged over `window_s` while this process
    sleeps (its own time is taken out). None where the kernel does not say."""
    first, own = _jiffies(), time.process_time()
    if first is None:
        return None
    time.sleep(window_s)
    second, own = _jiffies(), time.process_time() - own
    if second is None or second[1] <= first[1]:
        return None
    n = os.cpu_count() or 1  # /proc/stat's first line sums every online core
    busy = (second[0] - first[0]) / (second[1] - first[1]) * n - own / window_s
    return max(0.0, min(float(n), busy))


def whole_cores(busy: float) -> int:
    """Busy cores as counted here: whole cores (another process keeps a core; a few per cent
    of a core is the kernel and this shell)."""
    return int(busy + 0.5)


@functools.lru_cache(maxsize=None)
def sampled_busy_cores() -> Optional[float]:
    """busy_cores() once per process: a plan, its explanations, its report and the launch it
    makes read one state."""
    return busy_cores()


def in_worker() -> bool:
    """Inside a torchrun worker the sibling ranks are the load: it must not be measured there."""
    return "LOCAL_RANK" in os.environ


def wait_policy_env(threads: int) -> dict[str, str]:
    """OMP_WAIT_POLICY for a process of `threads` intra-op threads: PASSIVE on busy cores (as
    the thread efficiency was measured there), the default (spinning, faster) on idle ones;
    a policy the user set stands."""
    if threads < 2 or "OMP_WAIT_POLICY" in os.environ or in_worker():
        return {}
    busy = sampled_busy_cores()
    return dict(PASSIVE) if busy is not None and whole_cores(busy) > 0 else {}


# ------------------------------------------------------------------ on-the-spot probes


def efficiency_from_ratio(ratio: float, threads: int) -> float:
    """The thread_efficiency e that techniques/threads/cost.py reads back as `ratio` (speed of
    k threads over one): 1 + (k - 1) e at or above one thread's speed, (1 + e)^(k - 1) below."""
    if ratio >= 1:
        return min(1.0, (ratio - 1) / (threads - 1))
    return max(1e-3, ratio) ** (1 / (threads - 1)) - 1


def _timed_steps(step, budget_s: float, least: int = 3, most: int = 30) -> list[float]:
    times, start = [], time.perf_counter()
    while len(times) < least or (time.perf_counter() - start < budget_s and len(times) < most):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def probe_step():
    """One SGD step of an MLP shaped like the calibration's probe (calibrate/measure.py PROBE:
    256 -> 5 x 512 -> 10, batch 128, 1.2 M parameters, ~15 ms on one core), in plain torch:
    the probe process imports torch alone (~1 s, not the 2.5 s of autopar's runtime)."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(0)
    widths = [256] + [512] * 5 + [10]
    layers = [m for a, b in zip(widths, widths[1:]) for m in (nn.Linear(a, b), nn.ReLU())][:-1]
    model = nn.Sequential(*layers)
    x, y = torch.randn(128, 256, generator=gen), torch.randint(0, 10, (128,), generator=gen)
    params = list(model.parameters())

    def step():  # plain SGD by hand: constructing torch.optim's first optimizer imports ~1.5 s more
        for p in params:
            p.grad = None
        nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            torch._foreach_add_(params, [p.grad for p in params], alpha=-1e-3)

    step()  # warm up
    return step


def thread_ratio(threads: int, budget_s: float = PROBE_BUDGET_S) -> float:
    """Speed of `threads` intra-op threads over one: medians of interleaved 1-thread and
    k-thread probe steps."""
    import torch

    step, ones, manys, start = probe_step(), [], [], time.perf_counter()
    while len(ones) < 3 or (time.perf_counter() - start < budget_s and len(ones) < 15):
        for k, into in ((1, ones), (threads, manys)):
            torch.set_num_threads(k)
            into += _timed_steps(step, 0.0, least=1)
    return statistics.median(ones) / statistics.median(manys)


def _stepping(barrier, steps: int, out, i: int) -> None:
    """One of the processes stepping together: each of `steps` steps (the same count in every
    process, or the barrier waits forever) starts and ends at a barrier."""
    import torch

    torch.set_num_threads(1)
    step = probe_step()
    times = []
    for _ in range(steps):
        barrier.wait(BARRIER_TIMEOUT_S)
        t = time.perf_counter()
        step()
        barrier.wait(BARRIER_TIMEOUT_S)
        times.append(time.perf_counter() - t)
    out[i] = statistics.median(times)


def concurrency_ratio(processes: int, budget_s: float = PROBE_BUDGET_S) -> float:
    """Speed of each of `processes` processes stepping together (a barrier ends every step,
    as a gradient all-reduce does) over one process alone: the probe MLP, forked workers."""
    import torch

    torch.set_num_threads(1)
    step = probe_step()
    alone = statistics.median(_timed_steps(step, budget_s / 3, least=5))
    steps = max(5, min(30, int(budget_s / 2 / alone)))
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(processes), ctx.Array("d", processes)
    others = [ctx.Process(target=_stepping, args=(barrier, steps, out, i), daemon=True) for i in range(1, processes)]
    for p in others:
        p.start()
    try:
        _stepping(barrier, steps, out, 0)
    finally:
        for p in others:
            p.join(BARRIER_TIMEOUT_S)
            if p.is_alive():
                p.kill()
    return alone / max(out)


def probe_main(threads: int, processes: int) -> None:
    """Run in a fresh process (load_probe): print both ratios as JSON."""
    # processes first: a process forked after an OpenMP pool of several threads ran can hang
    concurrency = concurrency_ratio(processes) if processes > 1 else 1.0
    print(json.dumps({"threads": thread_ratio(threads) if threads > 1 else 1.0, "concurrency": concurrency}))


def load_probe(n: int, timeout_s: float = 60.0) -> Optional[dict]:
    """Both ratios for a node of n cores, measured as a run on busy cores runs: a fresh
    process with OMP_NUM_THREADS=n and PASSIVE waits (runtime/launch.py worker_env).
    None if the probe fails."""
    code = f"from autopar.calibrate.load import probe_main; probe_main({n}, {n})"
    env = {**os.environ, "OMP_NUM_THREADS": str(n), **PASSIVE}
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout_s)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return None


# ------------------------------------------------------------------ the cluster under load


@dataclass(frozen=True)
class Load:
    """This machine's cores when planned."""

    busy_cores: int  # whole cores other processes keep busy
    sampled: float  # busy cores as sampled
    cores: int
    ratios: Optional[dict]  # load_probe's, measured under this load (None: idle, or the probe failed)


@functools.lru_cache(maxsize=None)
def now(n: int) -> Optional[Load]:
    """The load of a node of n cores, probed once per process."""
    busy = sampled_busy_cores()
    if busy is None:
        return None
    whole = whole_cores(busy)
    return Load(whole, busy, n, load_probe(n) if whole and n > 1 else None)


def under_current_load(cluster: dict) -> tuple[dict, int]:
    """This machine's cluster mapping (calibrated idle) under the cores' load now: the thread
    and concurrency efficiencies measured under it, said in the device's source; and the
    whole busy cores (0: idle, or inside a worker, where nothing is measured)."""
    if in_worker():
        return cluster, 0
    load = now(int(cluster.get("devices_per_node") or cores()))
    if load is None or not load.busy_cores:
        return cluster, 0
    device = dict(cluster["device"])
    said = f"{load.busy_cores} of {load.cores} cores busy with other processes when planned ({load.sampled:.2f} sampled)"
    if load.ratios is None:
        said += "; the efficiencies could not be measured under this load (the idle calibration's are used)"
    else:
        device["thread_efficiency"] = round(efficiency_from_ratio(load.ratios["threads"], load.cores), 4)
        device["concurrency_efficiency"] = round(min(1.0, max(1e-3, load.ratios["concurrency"])), 4)
        said += (f"; measured then: {load.cores} threads at {load.ratios['threads']:.2f}x one thread's speed, "
                 f"{load.cores} processes stepping together at {load.ratios['concurrency']:.2f}x one alone")
    device["source"] = f"{device.get('source', '')}; {said}"
    return {**cluster, "device": device}, load.busy_cores
