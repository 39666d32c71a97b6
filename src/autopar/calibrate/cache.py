"""`cluster: {preset: local}`: this machine, measured on first use and cached per machine.

CPUs of one kind differ (AVX-512 bf16 on some, none on others: bf16 matmul from ~1 to
~165 GFLOP/s), so no preset measured elsewhere describes the machine a plan runs on.
The first plan, estimate or run that names `local` calibrates (`autopar calibrate`'s
measurements, a minute or so) and writes the cluster file under
$AUTOPAR_CACHE_DIR (default ~/.cache/autopar), named by what decides the numbers:
CPU model, cores, memory, torch version. Later uses read it; another machine, or
another torch, measures again. The file is written whole, then renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from autopar.calibrate.load import busy_cores, in_worker, whole_cores
from autopar.errors import InputError

Measure = Callable[[], dict]  # -> a cluster YAML mapping (autopar.calibrate.cluster.measure_cluster)


def machine_key() -> dict[str, Any]:
    """What this machine's numbers depend on."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 0
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "none"
    return {"cpu": model, "cores": os.cpu_count() or 1, "memory_GB": round(memory / 1e9, 1), "torch": torch_version,
            "python": platform.python_version()}


def cache_path(key: dict[str, Any]) -> Path:
    root = Path(os.environ.get("AUTOPAR_CACHE_DIR") or Path.home() / ".cache" / "autopar")
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return root / f"local-{digest}.yaml"


def this_machine(measure: Optional[Measure] = None) -> dict[str, Any]:
    """This machine's cluster mapping: read from the cache, else measured and cached."""
    key = machine_key()
    path = cache_path(key)
    if path.exists():
        try:
            data = yaml.safe_load(path.read_text())
            if isinstance(data, dict) and data.get("machine") == key and isinstance(data.get("cluster"), dict):
                return data["cluster"]
        except (OSError, yaml.YAMLError):
            pass  # unreadable: measure again and replace it
    if in_worker():  # every rank would measure at once, each the others' load
        raise InputError("cluster.preset", "local", "this machine is not calibrated yet: run `autopar calibrate` "
                         "or `autopar plan RECIPE` here first (it measures once), then launch")
    if measure is None:
        measure = _measure
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    busy = busy_cores()
    if busy is not None and whole_cores(busy) > 0:
        print(f"autopar: {busy:.1f} cores are busy with other processes: the measured speeds will be low "
              f"(delete {path} and plan again when the machine is idle)", file=sys.stderr)
    cluster = measure()
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": key, "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
              "load_average_before": load, "busy_cores_before": None if busy is None else round(busy, 2),
              "cluster": cluster}
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(yaml.safe_dump(record, sort_keys=False))
    os.replace(tmp.name, path)
    return cluster


def _measure() -> dict:
    # Imported here: measuring loads torch.distributed and the runtime, which planning must not
    # load unless this machine has to be measured.
    from autopar.calibrate.cluster import measure_cluster

    print(f"autopar: measuring this machine once for cluster 'local' (cached in {cache_path(machine_key()).parent})",
          file=sys.stderr)
    return measure_cluster(quick=False)
