"""Asynchronous data parallelism: local SGD, parameters averaged every sync_every steps."""

from autopar.techniques.base import Technique
from autopar.techniques.local_sgd import rules, space

TECHNIQUE = Technique(
    name="local_sgd",
    fields=("sync", "sync_every"),
    rules=(rules.check_async,),
    dimensions=space.DIMENSIONS,
    predicates=space.PREDICATES,
    apply="autopar.techniques.local_sgd.apply",
)
