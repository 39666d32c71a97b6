"""Pipeline parallelism (GPipe, 1F1B, interleaved 1F1B): layers cut horizontally into stages."""

from autopar.techniques.base import Technique
from autopar.techniques.pipeline import rules, space

TECHNIQUE = Technique(
    name="pipeline",
    fields=("pp", "schedule", "virtual_stages", "stages"),
    rules=(rules.check_pipeline,),
    priced=(rules.check_priced_schedule,),
    dimensions=space.DIMENSIONS,
    apply="autopar.techniques.pipeline.apply",
    fp16_ok=lambda s: s.pp == 1,
)
