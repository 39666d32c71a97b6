"""Hand a strategy to the launchers people run: torchtitan (TOML job config), Megatron-LM
(command-line arguments), DeepSpeed (JSON config) and Hugging Face accelerate (YAML config).

`export(fmt, strategy, recipe, cluster)` writes one file's text; `read_back(fmt, text, layers)` reads
the parallel knobs back out of such a file into Strategy fields (tests check the round trip
on every plan they export). A knob a format has no way to say is refused in one line that
names the format to use instead, never dropped.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Optional

from autopar.errors import InputError
from autopar.export import accelerate, deepspeed, megatron, torchtitan
from autopar.spec.cluster import Cluster
from autopar.spec.recipe import Recipe
from autopar.spec.strategy import Strategy


class Format(str, Enum):
    TORCHTITAN = "torchtitan"
    MEGATRON = "megatron"
    DEEPSPEED = "deepspeed"
    ACCELERATE = "accelerate"


_MODULES = {Format.TORCHTITAN: torchtitan, Format.MEGATRON: megatron, Format.DEEPSPEED: deepspeed, Format.ACCELERATE: accelerate}


def parse_format(text: str, field: str = "--to") -> Format:
    try:
        return Format(text)
    except ValueError:
        raise InputError(field, text, f"expected one of {', '.join(f.value for f in Format)}") from None


def export(fmt: Format, s: Strategy, recipe: Recipe, cluster: Cluster, field: str = "--to") -> str:
    """The launcher's file for `s` on `cluster` (InputError for a knob the format cannot say)."""
    module = _MODULES[fmt]
    problem = module.unsupported(s)
    if problem:
        raise InputError(field, fmt.value, f"{problem} ({s.to_text()})")
    return module.write(s, recipe, cluster)


def read_back(fmt: Format, text: str, layers: Optional[int] = None) -> dict[str, Any]:
    """The Strategy fields a file of this format sets (the inverse of export on what it carries);
    `layers`: the model's blocks, for formats that name stage starts rather than counts."""
    return _MODULES[fmt].read(text, layers)
