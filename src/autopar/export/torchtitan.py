"""torchtitan job config (TOML): [parallelism], [activation_checkpoint], [training] as
torchtitan's JobConfig names them (torchtitan/config/job_config.py).

dp maps onto torchtitan's two data-parallel degrees: ZeRO-0 replicates (DDP), ZeRO-2/3
shard with FSDP2 (reshard after forward never / always), HSDP both. torchtitan's tensor
parallelism always shards the norms by sequence, and it has no ZeRO-1."""

from __future__ import annotations

import tomllib
from typing import Any, Optional

from autopar.export._common import replica_problem, transformer_dims
from autopar.spec.cluster import Cluster
from autopar.spec.enums import Precision, Recompute, Schedule
from autopar.spec.recipe import Recipe
from autopar.spec.strategy import Strategy

SCHEDULES = {Schedule.GPIPE: "GPipe", Schedule.ONE_F_ONE_B: "1F1B", Schedule.INTERLEAVED: "Interleaved1F1B",
             Schedule.ZERO_BUBBLE: "InterleavedZeroBubble", Schedule.ZBV: "ZBVZeroBubble", Schedule.DUALPIPEV: "DualPipeV"}
RESHARD = {2: "never", 3: "always"}


def unsupported(s: Strategy) -> Optional[str]:
    if s.zero == 1:
        return "torchtitan has no ZeRO-1 (optimizer states only): use zero=2, or export to deepspeed or megatron"
    if s.tp > 1 and not s.sequence_parallel:
        return "torchtitan's tensor parallelism shards the norms by sequence: use sequence_parallel=true"
    return replica_problem(s, "torchtitan")


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return repr(v)


def write(s: Strategy, recipe: Recipe, cluster: Cluster) -> str:
    dims, G = transformer_dims(recipe), recipe.training.global_batch
    replicate, shard = (s.dp // s.dp_shard, s.dp_shard) if s.dp_shard else ((s.dp, 1) if s.zero == 0 else (1, s.dp))
    parallel: dict[str, Any] = {"data_parallel_replicate_degree": replicate, "data_parallel_shard_degree": shard,
                                "fsdp_reshard_after_forward": RESHARD.get(s.zero, "default"),
                                "tensor_parallel_degree": s.tp, "context_parallel_degree": s.cp, "expert_parallel_degree": s.ep,
                                "pipeline_parallel_degree": s.pp}
    local = s.local_batch(G)
    if s.pp > 1:
        parallel["pipeline_parallel_schedule"] = SCHEDULES[s.schedule]
        parallel["pipeline_parallel_microbatch_size"] = s.microbatch_size(G)
        if s.stages is not None:
            starts = [sum(s.stages[:i]) for i in range(1, len(s.stages))]
            parallel["pipeline_parallel_split_points"] = [f"layers.{k}" for k in starts]
    training = {"local_batch_size": local if s.pp > 1 else s.microbatch_size(G), "global_batch_size": G,
                "seq_len": dims["seq_len"] if dims else 0, "steps": recipe.training.steps or 0,
                "mixed_precision_param": "float32" if recipe.training.precision is Precision.FP32 else "bfloat16",
                "enable_cpu_offload": s.offload}
    sections = {
        "job": {"description": f"autopar plan: {s.to_text()}"},
        "model": {"name": {"llama": "llama3", "gpt": "gpt"}.get(dims["family"], "custom") if dims else "custom"},
        "optimizer": {"name": "AdamW", "lr": recipe.training.lr},
        "training": training,
        "parallelism": parallel,
        "activation_checkpoint": {"mode": s.recompute.value, **({"selective_ac_option": "op"} if s.recompute is Recompute.SELECTIVE else {})},
    }
    lines = [f"# torchtitan job config written by autopar for {cluster.devices} devices ({cluster.name})"]
    for name, body in sections.items():
        lines.append(f"\n[{name}]")
        lines += [f"{k} = {_value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def read(text: str, layers: Optional[int] = None) -> dict[str, Any]:
    raw = tomllib.loads(text)
    p, t, ac = raw["parallelism"], raw["training"], raw["activation_checkpoint"]
    replicate, shard = p["data_parallel_replicate_degree"], p["data_parallel_shard_degree"]
    zero = 0 if shard == 1 else {"never": 2, "always": 3}[p["fsdp_reshard_after_forward"]]
    pp = p["pipeline_parallel_degree"]
    out: dict[str, Any] = {"dp": replicate * shard, "zero": zero, "dp_shard": shard if replicate > 1 and shard > 1 else None,
                           "tp": p["tensor_parallel_degree"], "sequence_parallel": p["tensor_parallel_degree"] > 1,
                           "cp": p["context_parallel_degree"], "ep": p["expert_parallel_degree"], "pp": pp,
                           "offload": t["enable_cpu_offload"], "recompute": Recompute(ac["mode"])}
    if pp > 1:
        out["schedule"] = {v: k for k, v in SCHEDULES.items()}[p["pipeline_parallel_schedule"]]
        out["microbatch"] = p["pipeline_parallel_microbatch_size"]
        points = [int(x.split(".")[-1]) for x in p.get("pipeline_parallel_split_points", [])]
        if points and layers:
            bounds = [0, *points, layers]
            out["stages"] = tuple(b - a for a, b in zip(bounds, bounds[1:]))
            out["virtual_stages"] = len(out["stages"]) // pp
    else:
        out["microbatch"] = t["local_batch_size"]
    return out
