"""Mixed precision: how a recipe's precision is applied.

fp32 runs in fp32. bf16 and fp16 are mixed: parameters and optimizer states stay in
fp32 and compute runs in the low precision, by
  - FSDP2's MixedPrecisionPolicy (bf16 parameters for compute, fp32 gradient
    reduction) on the chunks FSDP2 wraps, or
  - torch.autocast everywhere else (DDP, tensor/pipeline parallel, single process).
fp16 adds dynamic loss scaling (torch.amp.GradScaler); validity.check_precision limits it to the
strategies whose gradients are plain tensors (DDP, ZeRO-1, local SGD, features).
A dtype override (tests run in float64) disables all of this.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy

from autopar.spec.enums import Precision

_LOW = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}


@dataclass(frozen=True)
class PrecisionPlan:
    param_dtype: torch.dtype  # what the model is built in
    compute_dtype: Optional[torch.dtype]  # low precision for compute; None: same as param_dtype
    device_type: str

    @classmethod
    def of(cls, precision: Precision, device_type: str, override: Optional[torch.dtype]) -> "PrecisionPlan":
        if override is not None:
            return cls(override, None, device_type)
        return cls(torch.float32, _LOW.get(precision), device_type)

    def fsdp_policy(self) -> Optional[MixedPrecisionPolicy]:
        if self.compute_dtype is None:
            return None
        return MixedPrecisionPolicy(param_dtype=self.compute_dtype, reduce_dtype=torch.float32)

    def autocast(self, fsdp_applied: bool) -> contextlib.AbstractContextManager:
        if self.compute_dtype is None or fsdp_applied:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.compute_dtype)

    def grad_scaler(self) -> Optional[torch.amp.GradScaler]:
        if self.compute_dtype is not torch.float16:
            return None
        return torch.amp.GradScaler(self.device_type)
