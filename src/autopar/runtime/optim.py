"""The recipe's optimizer as a torch.optim class and its arguments.

sgd: SGD(lr); momentum: SGD(lr, momentum=0.9); adam: Adam(lr); adamw: AdamW(lr)
(PyTorch's defaults otherwise: betas (0.9, 0.999), eps 1e-8, AdamW weight_decay 0.01).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from autopar.spec.enums import Optimizer
from autopar.spec.recipe import TrainingSpec

MOMENTUM = 0.9


def optimizer_class(training: TrainingSpec) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    kind = training.optimizer
    if kind is Optimizer.SGD:
        return torch.optim.SGD, {"lr": training.lr}
    if kind is Optimizer.MOMENTUM:
        return torch.optim.SGD, {"lr": training.lr, "momentum": MOMENTUM}
    if kind is Optimizer.ADAM:
        return torch.optim.Adam, {"lr": training.lr}
    return torch.optim.AdamW, {"lr": training.lr}


def build_optimizer(params: Iterable[torch.nn.Parameter], training: TrainingSpec) -> torch.optim.Optimizer:
    cls, kwargs = optimizer_class(training)
    return cls(list(params), **kwargs)
