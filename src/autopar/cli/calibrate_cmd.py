"""`autopar calibrate [--out cluster.yaml]`: measure this machine and write a cluster file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml

from autopar.cli.progress import bar
from autopar.errors import InputError


def register(subparsers) -> None:
    p = subparsers.add_parser("calibrate", help="measure this machine (compute, memory, collectives) into a cluster file")
    p.add_argument("--out", default="cluster.yaml", help="where to write the cluster YAML (default cluster.yaml)")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats (for tests)")
    p.set_defaults(func=run)


def run(args) -> int:
    out = Path(args.out)
    if out.exists() and out.is_dir():
        raise InputError("--out", str(out), "is a directory; give a file path")
    if not out.parent.exists():
        raise InputError("--out", str(out), f"its folder {out.parent} does not exist")

    # Imported here: measuring loads torch.distributed and the runtime, which planning commands must not.
    from autopar.calibrate.cluster import measure_cluster

    data = measure_cluster(quick=args.quick, on_progress=bar)
    text = yaml.safe_dump(data, sort_keys=False)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(text)  # written whole, then renamed: never a half-written file
    os.replace(tmp.name, out)
    print(text, end="")
    print(f"wrote {out}")
    return 0


