"""Tensor parallelism (Megatron-LM) and sequence parallelism: layers split vertically."""

from autopar.techniques.base import Technique
from autopar.techniques.tensor import rules, space

TECHNIQUE = Technique(
    name="tensor",
    fields=("tp", "sequence_parallel"),
    rules=(rules.check_tensor_parallel, rules.check_sequence_parallel),
    dimensions=space.DIMENSIONS,
    predicates=space.PREDICATES,
    apply="autopar.techniques.tensor.apply",
    fp16_ok=lambda s: s.tp == 1,
)
