"""The models of today's large-run techniques against their published measurements
(validation/data/technique_runs.json): zero-bubble pipelines (Qi et al. 2024, Tables 3, 4
and 6), ZeRO-Offload (Ren et al. 2021) and a Megatron-Core MoE run with expert
parallelism. Each row's published configuration is estimated as given; what a source
does not state is assumed here, by name:

  VOCAB_ASSUMED        Megatron's padded GPT-2 vocabulary (neither paper states it)
  SEQ_OFFLOAD_ASSUMED  ZeRO-Offload's sequence length (its tutorial's GPT-2 default)

ZB-1p (the searched schedule with 1F1B's memory) is priced as our zero_bubble with one
chunk (ZB-H1, the handcrafted schedule with the same memory: Qi et al. Sec. 3); ZeRO-
Offload (ZeRO-2 with optimizer states and gradients on the host) as our ZeRO-3 offload
(FSDP2 CPUOffloadPolicy: parameters too), on one device the same bytes moved per step
but for the parameters' own copy in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from autopar.cost.model import CostModel
from autopar.profile.profiler import profile_recipe
from autopar.spec.cluster import parse_cluster
from autopar.spec.recipe import parse_recipe
from autopar.spec.strategy import Strategy
from autopar.techniques import plan_problem

PATH = Path(__file__).resolve().parent / "data" / "technique_runs.json"
VOCAB_ASSUMED = 50304
SEQ_OFFLOAD_ASSUMED = 1024
SCHEDULES = {"ZB-1p (1F1B's memory)": "zero_bubble", "1F1B": "1f1b", "ZB-V": "zbv,virtual_stages=2"}
# DGX-2 host (DGX-2 datasheet: 1.5 TB DDR4, 2 x Xeon Platinum 8168 with 6 channels of
# DDR4-2666 each, 16 V100 on PCIe 3.0 x16): the v100 node preset with its host memory
DGX2 = {"preset": "v100-pcie-node", "nodes": 1, "devices_per_node": 16, "host_memory_GB": 1500}


@dataclass(frozen=True)
class TechniqueCheck:
    run_id: str
    unit: str
    measured: float
    predicted: Optional[float]  # None: the configuration is not expressible (see `note`)
    strategy: str
    note: str = ""

    @property
    def error(self) -> Optional[float]:
        return None if self.predicted is None else self.predicted / self.measured - 1


def load() -> list[dict[str, Any]]:
    return json.loads(PATH.read_text())


def check(run: dict[str, Any]) -> TechniqueCheck:
    kind = run["category"]
    if kind == "zero_bubble_pipeline":
        return _pipeline(run)
    if kind == "offload":
        return _offload(run)
    return _moe(run)


def _gpt(m: dict[str, Any], batch: int, precision: str, seq: int):
    return parse_recipe({"model": {"family": "gpt", "layers": m["layers"], "hidden": m["hidden"], "heads": m["heads"],
                                   "seq_len": seq, "vocab": m.get("vocab") or VOCAB_ASSUMED, "dropout": 0.1},
                         "data": {"samples": 10**8},
                         "training": {"global_batch": batch, "optimizer": "adam", "precision": precision, "steps": 1}})


def _estimate(recipe, cluster, text: str):
    """(estimate or None, the rules' reason)."""
    s = Strategy.parse(text)
    profile = profile_recipe(recipe)
    problem = plan_problem(s, profile.facts, recipe.training.global_batch, recipe.training.precision, cluster)
    if problem is not None:
        return None, problem
    return CostModel.for_recipe(recipe, cluster, profile).estimate(s), ""


def _pipeline(run: dict[str, Any]) -> TechniqueCheck:
    """Samples per GPU per second of a pp-GPU pipeline, b x m samples per step."""
    c, gpus = run["config"], run["cluster"]["num_gpus"]
    batch = c["microbatch"] * c["num_microbatches"]
    recipe = _gpt(run["model"], batch, "bf16", run["model"]["seq_len"])
    cluster = parse_cluster({"preset": "dgx-a100-80gb", "nodes": -(-gpus // 8)})
    text = f"pp={c['pp']},microbatch={c['microbatch']},schedule={SCHEDULES[c['schedule']]}"
    e, why = _estimate(recipe, cluster, text)
    predicted = None if e is None else batch / e.step_time_s / gpus
    if e is not None and not e.fits:
        why = f"predicted not to fit: {e.reason}"
    return TechniqueCheck(run["id"], "samples/GPU/s", run["measured"]["samples_per_gpu_per_s"], predicted, text, why)


def _offload(run: dict[str, Any]) -> TechniqueCheck:
    """TFLOP/s of one V100, counted with the recomputed forward (the hardware's FLOPs)."""
    c = run["config"]
    recipe = _gpt(run["model"], c["batch"], "fp16", SEQ_OFFLOAD_ASSUMED)
    text = "zero=3,offload=true,recompute=full"
    cluster, p = parse_cluster(DGX2), profile_recipe(recipe)
    _, why = _estimate(recipe, cluster, text)
    # priced even where the runtime's rules refuse it (fp16 with offload: no loss scaling
    # outside DDP/ZeRO-1 here): the cost model's FLOPs and bytes are fp16's either way
    e = CostModel.for_recipe(recipe, cluster, p).estimate(Strategy.parse(text), check=False)
    predicted = e.tflops_per_device * (2 * p.forward_flops + p.backward_flops) / (p.forward_flops + p.backward_flops)
    if not e.fits:
        why = f"predicted not to fit: {e.reason}"
    elif why:
        why = f"priced; autopar run refuses it: {why}"
    return TechniqueCheck(run["id"], "TFLOP/s", run["measured"]["tflops_per_gpu"], predicted, text, why)


def _moe(run: dict[str, Any]) -> TechniqueCheck:
    """Step time of a Megatron-Core MoE run, where its degrees are expressible."""
    m, c = run["model"], run["config"]
    recipe = parse_recipe({"model": {"family": "llama", "layers": m["layers"], "hidden": m["hidden"], "heads": m["heads"],
                                     "kv_heads": m["kv_heads"], "seq_len": m["seq_len"], "vocab": 151936, "experts": m["experts"],
                                     "top_k": m["top_k"], "ffn_hidden": m["expert_ffn"]},
                           "data": {"samples": 10**8},
                           "training": {"global_batch": c["global_batch"], "optimizer": "adam", "precision": "bf16", "steps": 1}})
    cluster = parse_cluster({"preset": "dgx-h100", "nodes": run["cluster"]["num_gpus"] // 8})
    text = (f"dp={c['dp']},tp={c['tp']},pp={c['pp']},ep={c['ep']},microbatch={c['microbatch']},"
            f"schedule=interleaved,virtual_stages={c['vpp']}")
    e, why = _estimate(recipe, cluster, text)
    return TechniqueCheck(run["id"], "s/step", run["measured"]["iteration_time_s"], None if e is None else e.step_time_s, text, why)


def pipeline_pairs(checks: list[TechniqueCheck]) -> list[tuple[str, float, float]]:
    """Per (table, model, micro-batch count) with both ZB-1p and 1F1B: (key, measured
    speed-up, predicted speed-up) of zero bubble over 1F1B."""
    by = {c.run_id: c for c in checks}
    out = []
    for rid, c in by.items():
        if "_zb_1p_" not in rid or c.predicted is None:
            continue
        base = by.get(rid.replace("_zb_1p_", "_1f1b_"))
        if base is not None and base.predicted is not None:
            out.append((rid.replace("_zb_1p", ""), c.measured / base.measured, c.predicted / base.predicted))
    return out
