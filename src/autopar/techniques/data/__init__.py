"""Data parallelism by samples: DDP, and sharded states ZeRO-1/2/3 (FSDP2), HSDP."""

from autopar.techniques.base import Technique
from autopar.techniques.data import rules, space

TECHNIQUE = Technique(
    name="data",
    fields=("dp", "zero", "dp_shard"),
    rules=(rules.check_batch_split, rules.check_hsdp),
    dimensions=space.DIMENSIONS,
    predicates=space.PREDICATES,
    apply="autopar.techniques.data.apply",
    fp16_ok=lambda s: s.zero < 2,
    needed_by=lambda s: s.cp > 1,  # context-parallel ranks average their gradients (dp x cp group)
)
