"""Host offload (ZeRO-Offload, Ren et al. 2021): ZeRO-3's shards of parameters, gradients
and optimizer states kept in host memory, the optimizer step run on the host (FSDP2
CPUOffloadPolicy)."""

from autopar.techniques.base import Technique
from autopar.techniques.offload import rules

TECHNIQUE = Technique(
    name="offload",
    fields=("offload",),
    rules=(rules.check_offload,),
    apply="autopar.techniques.offload.apply",
    fp16_ok=lambda s: not s.offload,
)
