"""Data parallelism by feature dimensions: the input layer's columns split over dp."""

from autopar.techniques.base import Technique
from autopar.techniques.features import rules, space

TECHNIQUE = Technique(
    name="features",
    fields=("data_partition",),
    rules=(rules.check_features,),
    dimensions=space.DIMENSIONS,
    predicates=space.PREDICATES,
    apply="autopar.techniques.features.apply",
)
