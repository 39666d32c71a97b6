"""Computational parallelism: workers sharing one memory (intra-op threads, or Hogwild)."""

from autopar.techniques.base import Technique
from autopar.techniques.threads import rules, space

TECHNIQUE = Technique(
    name="threads",
    fields=("threads",),
    rules=(rules.check_hogwild_batch,),
    priced=(rules.check_priced_threads,),
    dimensions=space.DIMENSIONS,
    predicates=space.PREDICATES,
    apply="autopar.techniques.threads.apply",
    fp16_ok=lambda s: not (s.is_async and s.threads > 1),
)
