"""Megatron-LM arguments (pretrain_gpt.py), one per line: the model's dimensions, the
parallel degrees, the micro- and global batch, recomputation and the distributed optimizer.

ZeRO-1 maps to --use-distributed-optimizer (optimizer states sharded over dp), ZeRO-3 to
--use-torch-fsdp2. Megatron-LM runs 1F1B, interleaved 1F1B (layers per
virtual stage, uniform) and pipelines whose first or last stage differ from the rest."""

from __future__ import annotations

import shlex
from typing import Any, Optional

from autopar.export._common import replica_problem, transformer_dims
from autopar.spec.cluster import Cluster
from autopar.spec.enums import Precision, Recompute, Schedule
from autopar.spec.recipe import Recipe
from autopar.spec.strategy import Strategy


def unsupported(s: Strategy) -> Optional[str]:
    if s.pp > 1 and s.schedule in (Schedule.GPIPE, Schedule.ZERO_BUBBLE, Schedule.ZBV, Schedule.DUALPIPEV):
        return f"Megatron-LM schedules pipelines as 1F1B or interleaved 1F1B, not {s.schedule.value}: export to torchtitan"
    if s.zero == 2:
        return ("Megatron-LM's distributed optimizer shards optimizer states (ZeRO-1) but keeps whole gradient buffers: "
                "use zero=1 or 3, or export to torchtitan or deepspeed")
    if s.offload or s.dp_shard is not None:
        return "Megatron-LM has no host offload of ZeRO-3 shards or HSDP here: export to torchtitan or deepspeed"
    if (problem := replica_problem(s, "Megatron-LM")) is not None:
        return problem
    if s.stages is not None and s.pp > 1 and _layout_args(s) is None:
        return f"Megatron-LM cuts uniform stages (or a different first/last stage); stages {'/'.join(map(str, s.stages))} are neither"
    return None


def _layout_args(s: Strategy) -> Optional[list[tuple[str, Any]]]:
    """Arguments giving the stage layout, or None when Megatron-LM cannot express it."""
    counts = list(s.stages or ())
    if not counts or len(set(counts)) == 1:
        return [("--num-layers-per-virtual-pipeline-stage", counts[0])] if counts and s.virtual_stages > 1 else []
    if s.virtual_stages > 1:
        return None
    first, middle, last = counts[0], counts[1:-1], counts[-1]
    if middle and len(set(middle)) > 1:
        return None
    out = []
    if not middle or first != middle[0]:
        out.append(("--decoder-first-pipeline-num-layers", first))
    if not middle or last != middle[0]:
        out.append(("--decoder-last-pipeline-num-layers", last))
    return out


def write(s: Strategy, recipe: Recipe, cluster: Cluster) -> str:
    d, tr = transformer_dims(recipe), recipe.training
    args: list[tuple[str, Any]] = []
    if d:
        args += [("--num-layers", d["layers"]), ("--hidden-size", d["hidden"]), ("--num-attention-heads", d["heads"]),
                 ("--ffn-hidden-size", d["ffn"]), ("--seq-length", d["seq_len"]), ("--max-position-embeddings", d["seq_len"])]
        if d["kv_heads"] != d["heads"]:
            args += [("--group-query-attention", None), ("--num-query-groups", d["kv_heads"])]
        if d["experts"]:
            args += [("--num-experts", d["experts"]), ("--moe-router-topk", d["top_k"])]
    args += [("--micro-batch-size", s.microbatch_size(tr.global_batch)), ("--global-batch-size", tr.global_batch),
             ("--tensor-model-parallel-size", s.tp), ("--pipeline-model-parallel-size", s.pp),
             ("--context-parallel-size", s.cp), ("--expert-model-parallel-size", s.ep)]
    args += _layout_args(s) or []
    if s.sequence_parallel:
        args.append(("--sequence-parallel", None))
    if s.recompute is Recompute.SELECTIVE:
        args.append(("--recompute-granularity", "selective"))
    elif s.recompute is Recompute.FULL:
        args += [("--recompute-granularity", "full"), ("--recompute-method", "uniform"), ("--recompute-num-layers", 1)]
    if s.zero == 1:
        args.append(("--use-distributed-optimizer", None))
    elif s.zero == 3:
        args.append(("--use-torch-fsdp2", None))
    if tr.precision is Precision.BF16:
        args.append(("--bf16", None))
    elif tr.precision is Precision.FP16:
        args.append(("--fp16", None))
    args.append(("--lr", tr.lr))
    if tr.steps:
        args.append(("--train-iters", tr.steps))
    header = f"# Megatron-LM arguments written by autopar: {s.to_text()} on {s.devices} devices\n" \
             "# dp = world size / (tp x pp x cp) is implied; pass these to pretrain_gpt.py under torchrun\n"
    return header + " \\\n".join(f"{k} {shlex.quote(str(v))}" if v is not None else k for k, v in args) + "\n"


def read(text: str, layers: Optional[int] = None) -> dict[str, Any]:
    tokens = shlex.split("\n".join(line for line in text.splitlines() if not line.startswith("#")).replace("\\\n", " "))
    args: dict[str, Any] = {}
    for i, tok in enumerate(tokens):
        if tok.startswith("--"):
            nxt = tokens[i + 1] if i + 1 < len(tokens) and not tokens[i + 1].startswith("--") else None
            args[tok] = nxt
    tp, pp, cp, ep = (int(args[k]) for k in ("--tensor-model-parallel-size", "--pipeline-model-parallel-size",
                                              "--context-parallel-size", "--expert-model-parallel-size"))
    per_virtual = args.get("--num-layers-per-virtual-pipeline-stage")
    out: dict[str, Any] = {"tp": tp, "pp": pp, "cp": cp, "ep": ep, "sequence_parallel": "--sequence-parallel" in args,
                           "microbatch": int(args["--micro-batch-size"]),
                           "recompute": Recompute(args.get("--recompute-granularity") or "none"),
                           "zero": 3 if "--use-torch-fsdp2" in args else (1 if "--use-distributed-optimizer" in args else 0)}
    n = int(args["--num-layers"]) if "--num-layers" in args else layers
    if pp > 1 and n:
        if per_virtual:
            v = n // (pp * int(per_virtual))
            out.update(virtual_stages=v, schedule=Schedule.INTERLEAVED, stages=(int(per_virtual),) * (pp * v))
        else:
            first = int(args.get("--decoder-first-pipeline-num-layers") or 0)
            last = int(args.get("--decoder-last-pipeline-num-layers") or 0)
            rest = pp - (first > 0) - (last > 0)
            each = (n - first - last) // rest if rest else 0
            out["stages"] = tuple(([first] if first else []) + [each] * rest + ([last] if last else []))
    return out
