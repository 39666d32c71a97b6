"""Context parallelism (Llama 3's all-gather variant, Dubey et al. 2024, Sec. 3.3.2): each
sample's sequence split over `cp` ranks in load-balanced (zigzag) chunks; attention
all-gathers keys and values along the sequence and masks by position."""

from autopar.techniques.base import Technique
from autopar.techniques.context import rules, space

TECHNIQUE = Technique(
    name="context",
    fields=("cp",),
    rules=(rules.check_context,),
    dimensions=space.DIMENSIONS,
    apply="autopar.techniques.context.apply",
    fp16_ok=lambda s: s.cp == 1,
)
