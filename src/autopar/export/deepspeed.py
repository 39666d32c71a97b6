"""DeepSpeed config (JSON): batch sizes and accumulation, ZeRO stage and offload, precision,
activation checkpointing. Model parallelism (tp, pp, cp, ep) lives in the model code of
Megatron-DeepSpeed, not in this file, so it is refused here."""

from __future__ import annotations

import json
from typing import Any, Optional

from autopar.export._common import replica_problem
from autopar.spec.cluster import Cluster
from autopar.spec.enums import Precision, Recompute
from autopar.spec.recipe import Recipe
from autopar.spec.strategy import Strategy


def unsupported(s: Strategy) -> Optional[str]:
    if s.tp > 1 or s.pp > 1 or s.cp > 1 or s.ep > 1:
        return "a DeepSpeed config carries data parallelism and ZeRO only (model parallelism is in Megatron-DeepSpeed's code): export to megatron or torchtitan"
    if s.recompute is Recompute.SELECTIVE:
        return "DeepSpeed's activation checkpointing has no selective (attention-core) mode: use recompute=full or none"
    if s.dp_shard is not None:
        return "DeepSpeed has no HSDP (ZeRO++'s hpZ keeps a secondary copy, not replicas): export to torchtitan"
    if (problem := replica_problem(s, "DeepSpeed")) is not None:
        return problem
    return None


def write(s: Strategy, recipe: Recipe, cluster: Cluster) -> str:
    tr = recipe.training
    zero: dict[str, Any] = {"stage": s.zero}
    if s.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "train_batch_size": tr.global_batch,
        "train_micro_batch_size_per_gpu": s.microbatch_size(tr.global_batch),
        "gradient_accumulation_steps": s.num_microbatches(tr.global_batch),
        "zero_optimization": zero,
        "bf16": {"enabled": tr.precision is Precision.BF16},
        "fp16": {"enabled": tr.precision is Precision.FP16},
        "optimizer": {"type": {"sgd": "SGD", "momentum": "SGD", "adam": "Adam", "adamw": "AdamW"}[tr.optimizer.value],
                      "params": {"lr": tr.lr}},
    }
    if s.recompute is Recompute.FULL:
        config["activation_checkpointing"] = {"partition_activations": False, "contiguous_memory_optimization": False,
                                              "number_checkpoints": None}
    config["autopar"] = {"strategy": s.to_text(), "devices": s.devices}
    return json.dumps(config, indent=2) + "\n"


def read(text: str, layers: Optional[int] = None) -> dict[str, Any]:
    raw = json.loads(text)
    z = raw["zero_optimization"]
    micro, accum = raw["train_micro_batch_size_per_gpu"], raw["gradient_accumulation_steps"]
    return {"dp": raw["train_batch_size"] // (micro * accum), "zero": z["stage"], "offload": "offload_param" in z,
            "microbatch": micro, "recompute": Recompute.FULL if "activation_checkpointing" in raw else Recompute.NONE}
