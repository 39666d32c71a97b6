"""Independent subnetwork training (Yuan et al. 2022): hidden units partitioned over workers."""

from autopar.techniques.base import Technique
from autopar.techniques.subnet import rules, space

TECHNIQUE = Technique(
    name="subnet",
    fields=("subnet",),
    rules=(rules.check_subnet,),
    priced=(rules.check_priced_subnet,),
    dimensions=space.DIMENSIONS,
    predicates=space.PREDICATES,
    apply="autopar.techniques.subnet.apply",
    fp16_ok=lambda s: not s.subnet,
)
