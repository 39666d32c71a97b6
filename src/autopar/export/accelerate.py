"""Hugging Face accelerate config (YAML, `accelerate launch --config_file`): processes and
machines, mixed precision, FSDP2 (ZeRO-2/3, offload, activation checkpointing) or DDP, and
with tensor or context parallelism accelerate's parallelism_config (dp_replicate, dp_shard,
tp, cp sizes; FSDP2 over the data-parallel part). Gradient accumulation is an Accelerator
argument, written as a comment."""

from __future__ import annotations

from typing import Any, Optional

import yaml

from autopar.export._common import nodes_and_procs, replica_problem
from autopar.spec.cluster import Cluster
from autopar.spec.enums import Precision, Recompute
from autopar.spec.recipe import Recipe
from autopar.spec.strategy import Strategy


def unsupported(s: Strategy) -> Optional[str]:
    if s.pp > 1 or s.ep > 1:
        return "an accelerate config has no pipeline or expert parallelism: export to torchtitan or megatron"
    if (s.tp > 1 or s.cp > 1) and s.zero < 2:
        return "accelerate runs tensor/context parallelism with FSDP2 over the data-parallel ranks: use zero=2 or 3"
    if s.zero == 1:
        return "accelerate's FSDP has no ZeRO-1 (optimizer states only): use zero=2 or export to deepspeed"
    if s.recompute is Recompute.SELECTIVE:
        return "accelerate's fsdp_activation_checkpointing wraps whole blocks: use recompute=full or none"
    if s.dp_shard is not None:
        return "HSDP is not written here: export to torchtitan"
    if (problem := replica_problem(s, "accelerate")) is not None:
        return problem
    return None


def write(s: Strategy, recipe: Recipe, cluster: Cluster) -> str:
    nodes, per_node = nodes_and_procs(s, cluster)
    tr = recipe.training
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "NO" if s.devices == 1 and not s.offload else ("FSDP" if s.zero >= 2 or s.offload else "MULTI_GPU"),
        "num_machines": nodes, "num_processes": s.devices, "machine_rank": 0,
        "mixed_precision": {Precision.FP32: "no", Precision.BF16: "bf16", Precision.FP16: "fp16"}[tr.precision],
    }
    if s.tp > 1 or s.cp > 1:
        replicate, shard = (s.dp // s.dp_shard, s.dp_shard) if s.dp_shard else (1, s.dp)
        config["parallelism_config"] = {"parallelism_config_dp_replicate_size": replicate, "parallelism_config_dp_shard_size": shard,
                                        "parallelism_config_tp_size": s.tp, "parallelism_config_cp_size": s.cp,
                                        **({"parallelism_config_cp_comm_strategy": "allgather"} if s.cp > 1 else {})}
    if config["distributed_type"] == "FSDP":
        config["fsdp_config"] = {"fsdp_version": 2, "fsdp_reshard_after_forward": s.zero == 3, "fsdp_offload_params": s.offload,
                                 "fsdp_activation_checkpointing": s.recompute is Recompute.FULL,
                                 "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "fsdp_state_dict_type": "SHARDED_STATE_DICT"}
    head = (f"# accelerate config written by autopar: {s.to_text()} ({per_node} processes per machine)\n"
            f"# Accelerator(gradient_accumulation_steps={s.num_microbatches(tr.global_batch)}), "
            f"per-process batch {s.microbatch_size(tr.global_batch)}\n")
    return head + yaml.safe_dump(config, sort_keys=False)


def read(text: str, layers: Optional[int] = None) -> dict[str, Any]:
    raw = yaml.safe_load(text)
    fsdp = raw.get("fsdp_config") or {}
    zero = (3 if fsdp.get("fsdp_reshard_after_forward") else 2) if raw["distributed_type"] == "FSDP" else 0
    par = raw.get("parallelism_config") or {}
    tp, cp = par.get("parallelism_config_tp_size", 1), par.get("parallelism_config_cp_size", 1)
    return {"dp": raw["num_processes"] // (tp * cp), "tp": tp, "cp": cp, "zero": zero, "offload": bool(fsdp.get("fsdp_offload_params")),
            "recompute": Recompute.FULL if fsdp.get("fsdp_activation_checkpointing") else Recompute.NONE}
