"""Helpers shared by the subcommands: loading the recipe and cluster, writing JSON."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from autopar.errors import InputError
from autopar.spec.cluster import LOCAL, Cluster, parse_cluster
from autopar.spec.recipe import Recipe, load_recipe, load_yaml


def add_recipe_args(parser, cluster: bool = True) -> None:
    parser.add_argument("recipe", help="recipe YAML file")
    if cluster:
        parser.add_argument("--cluster", metavar="FILE", help="cluster YAML file (overrides the recipe's cluster)")


def load_inputs(args) -> tuple[Recipe, Optional[Cluster]]:
    recipe = load_recipe(args.recipe)
    cluster = None
    path = getattr(args, "cluster", None)
    if path:
        cluster = parse_cluster(load_yaml(path, "--cluster"), field_path="cluster")
    elif recipe.cluster is not None:
        cluster = parse_cluster(recipe.cluster)
    return recipe, cluster


def require_cluster(cluster: Optional[Cluster]) -> Cluster:
    """The cluster given, else this machine (`local`: measured on first use, cached)."""
    return cluster if cluster is not None else parse_cluster({"preset": LOCAL})


def print_json(data: Any) -> None:
    """Strict JSON: a non-finite number (a zero-time step's infinite throughput) is null."""
    json.dump(_finite(json.loads(json.dumps(data, default=_default))), sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _default(value: Any) -> Any:
    if hasattr(value, "value"):
        return value.value
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_text_atomic(path: str, text: str, field: str) -> None:
    """Write `text` to `path` through a temp file renamed into place (never half-written)."""
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=str(target.parent) or ".", prefix=f".{target.name}.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # a normal file's mode (mkstemp makes it private)
        os.replace(tmp, target)
    except OSError as err:
        raise InputError(field, path, f"cannot be written ({err.strerror or err})") from None
