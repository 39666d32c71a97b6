"""Activation recomputation (checkpointing): selective (attention cores) or full (each block)."""

from autopar.techniques.base import Technique
from autopar.techniques.recompute import rules

TECHNIQUE = Technique(
    name="recompute",
    fields=("recompute",),
    rules=(rules.check_recompute,),
    apply="autopar.techniques.recompute.apply",
)
