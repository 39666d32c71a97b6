"""Micro-batching: gradient accumulation over micro-batches (and the pipeline's unit of work)."""

from autopar.techniques.base import Technique
from autopar.techniques.microbatch import rules

TECHNIQUE = Technique(
    name="microbatch",
    fields=("microbatch",),
    rules=(rules.check_microbatch,),
    apply="autopar.techniques.microbatch.apply",
)
