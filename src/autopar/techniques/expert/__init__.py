"""Expert parallelism (GShard, Lepikhin et al. 2021; torchtitan's ExpertParallel): each
mixture-of-experts layer's experts split over groups of `ep` data-parallel ranks; every
rank routes its own tokens and an all-to-all sends each row to the rank holding its
expert, and back."""

from autopar.techniques.base import Technique
from autopar.techniques.expert import rules, space

TECHNIQUE = Technique(
    name="expert",
    fields=("ep",),
    rules=(rules.check_expert, rules.check_moe_layers),
    dimensions=space.DIMENSIONS,
    apply="autopar.techniques.expert.apply",
    fp16_ok=lambda s: s.ep == 1,
)
