"""Map published training runs (shared/validation/published_runs.json) to recipes and
strategies, and compare autopar's predictions with the measurements.

A run's unstated knobs (micro-batch size, interleaving depth, recomputation) are
chosen as the planner would: the best predicted configuration that fits memory.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from autopar.cost.estimate import Estimate
from autopar.cost.model import CostModel
from autopar.profile.profiler import profile_model
from autopar.spec.cluster import parse_cluster
from autopar.spec.enums import Optimizer, Precision, Recompute, Schedule
from autopar.spec.recipe import parse_recipe
from autopar.spec.strategy import Strategy
from autopar.techniques import plan_problem
from autopar.techniques.data.cost import bytes_per_param, model_state_bytes

ITERATION_CATEGORIES = ("llm_3d_parallel_weak_scaling", "zero3_vs_ptdp", "llm_activation_recompute")
# A copy of shared/validation/published_runs.json ships with the package so tests and
# benchmarks run from any checkout; pass another file (--path) to check other runs.
PACKAGED_PATH = Path(__file__).resolve().parent / "data" / "published_runs.json"


def load_runs(path: Optional[Path] = None) -> list[dict[str, Any]]:
    return json.loads(Path(path or PACKAGED_PATH).read_text())


def eq3_flops(batch: int, m: dict[str, Any]) -> float:
    """Megatron-LM SC'21 Eq. 3: 96 B s l h^2 (1 + s/(6h) + V/(16 l h)), recompute included."""
    B, s, L, h, V = batch, m["seq_len"], m["layers"], m["hidden"], m["vocab"]
    return 96 * B * s * L * h**2 * (1 + s / (6 * h) + V / (16 * L * h))


def measured_iteration_s(run: dict[str, Any]) -> Optional[float]:
    meas, der = run["measured"], run.get("derived") or {}
    if meas.get("iteration_time_s"):
        return float(meas["iteration_time_s"])
    if der.get("iteration_time_s_from_eq3"):
        return float(der["iteration_time_s_from_eq3"])
    if meas.get("tflops_per_gpu") and run["model"].get("layers"):
        n = run["cluster"]["num_gpus"]
        return eq3_flops(run["config"]["global_batch"], run["model"]) / (n * meas["tflops_per_gpu"] * 1e12)
    return None


@dataclass(frozen=True)
class RunCheck:
    run_id: str
    measured_s: float
    predicted_s: float
    estimate: Estimate
    chosen: str  # the knobs autopar had to choose, as text

    @property
    def error(self) -> float:
        return self.predicted_s / self.measured_s - 1


def run_recipe(run: dict[str, Any]):
    m = run["model"]
    n = run["cluster"]["num_gpus"]
    recipe = parse_recipe({
        "model": {"family": "gpt", "layers": m["layers"], "hidden": m["hidden"], "heads": m["heads"],
                  "seq_len": m["seq_len"], "vocab": m["vocab"], "dropout": 0.1},
        "data": {"samples": 10**8},
        "training": {"global_batch": run["config"]["global_batch"], "optimizer": "adam", "precision": "bf16", "steps": 1},
    })
    cluster = parse_cluster({"preset": "dgx-a100-80gb", "nodes": -(-n // 8)})
    return recipe, cluster


def _degrees(cfg: dict[str, Any]) -> tuple[int, int, int]:
    tp, pp, dp = cfg.get("tp"), cfg.get("pp"), cfg["dp"]
    if tp is None and cfg.get("model_parallel_size"):
        tp = 8  # the paper's default for large models (see the run's tp_pp_note)
        pp = cfg["model_parallel_size"] // tp
    return int(tp or 1), int(pp or 1), int(dp)


def candidate_strategies(run: dict[str, Any], n_layers: int) -> Iterable[tuple[Strategy, str]]:
    """The published configuration with each unstated knob enumerated."""
    cfg = run["config"]
    tp, pp, dp = _degrees(cfg)
    local = cfg["global_batch"] // dp
    rc_text = (cfg.get("recompute") or "").lower()
    recomputes = [Recompute.SELECTIVE] if "selective" in rc_text else [Recompute.FULL] if "full" in rc_text else list(Recompute)
    sp = bool(cfg.get("sequence_parallel"))
    micro = [cfg["microbatch"]] if cfg.get("microbatch") else [b for b in (1, 2, 4, 8) if local % b == 0]
    sched_text = (cfg.get("pipeline_schedule") or "").lower()
    stated_v = re.search(r"(\d+) interleaving", sched_text)
    if pp == 1:
        schedules = [(Schedule.ONE_F_ONE_B, 1)]
    elif stated_v:
        schedules = [(Schedule.INTERLEAVED, int(stated_v.group(1)))]
    else:
        schedules = [(Schedule.ONE_F_ONE_B, 1)] + [(Schedule.INTERLEAVED, v) for v in (2, 3, 4, 6, 8) if pp * v <= n_layers]
    for rc in recomputes:
        for b in micro:
            for sched, v in schedules:
                s = Strategy(dp=dp, tp=tp, pp=pp, zero=int(cfg.get("zero_stage") or 0), microbatch=b, schedule=sched,
                             virtual_stages=v, recompute=rc, sequence_parallel=sp)
                chosen = []
                if not cfg.get("microbatch"):
                    chosen.append(f"microbatch={b}")
                if pp > 1 and not stated_v:
                    chosen.append(f"schedule={sched.value}" + (f",v={v}" if v > 1 else ""))
                if len(recomputes) > 1:
                    chosen.append(f"recompute={rc.value}")
                yield s, ",".join(chosen) or "-"


def check_run(run: dict[str, Any], eff=None) -> Optional[RunCheck]:
    measured = measured_iteration_s(run)
    if measured is None or run["category"] not in ITERATION_CATEGORIES:
        return None
    recipe, cluster = run_recipe(run)
    profile = _profile(recipe)
    kwargs = {"eff": eff} if eff is not None else {}
    model = CostModel.for_recipe(recipe, cluster, profile, **kwargs)
    best = None
    for s, chosen in candidate_strategies(run, profile.pipeline_blocks):
        if plan_problem(s, model.facts, recipe.training.global_batch, None, cluster):
            continue
        e = model.estimate(s, check=False)
        key = (not e.fits, e.step_time_s)
        if best is None or key < best[0]:
            best = (key, e, chosen)
    if best is None:
        return None
    return RunCheck(run["id"], measured, best[1].step_time_s, best[1], best[2])


_PROFILES: dict[Any, Any] = {}


def _profile(recipe):
    key = recipe.model
    if key not in _PROFILES:
        _PROFILES[key] = profile_model(recipe.model, Precision.BF16)
    return _PROFILES[key]


def zero_memory_rows(runs: list[dict[str, Any]]) -> list[tuple[str, str, int, float, float]]:
    """(run id, stage, N_d, paper GB, autopar GB) for ZeRO's Table 1 (mixed-precision Adam, K = 12)."""
    per_param = bytes_per_param(Optimizer.ADAM, Precision.BF16)
    stages = {"P_os": 1, "P_os+g": 2, "P_os+g+p": 3}
    rows = []
    for run in runs:
        if not run["id"].startswith("zero_table1_"):
            continue
        psi = run["model"]["params_b"] * 1e9
        for name, stage in stages.items():
            for nd, paper in zip(run["config"]["dp_degrees"], run["measured"]["model_state_GB_per_device"][name]):
                ours = model_state_bytes(psi, per_param, stage, nd).total / 1e9
                rows.append((run["id"], name, nd, paper, ours))
    return rows


PER_LAYER_VARIANTS = {
    "baseline_no_recompute": (False, Recompute.NONE),
    "sequence_parallelism": (True, Recompute.NONE),
    "baseline_with_full_recompute": (False, Recompute.FULL),
    "selective_recompute": (False, Recompute.SELECTIVE),
    "selective_plus_sequence": (True, Recompute.SELECTIVE),
}


def per_layer_rows(runs: list[dict[str, Any]], eff=None) -> list[tuple[str, str, float, float]]:
    """(variant, 'fwd'|'bwd', measured ms, predicted ms) for per-layer timing runs
    (Korthikanti et al. 2022 Table 4: one transformer layer, tp = 8)."""
    rows = []
    for run in runs:
        if run["category"] != "per_layer_timing":
            continue
        cfg = run["config"]
        fake = {**run, "config": {**cfg, "global_batch": cfg["microbatch"], "dp": 1}, "cluster": {"num_gpus": 8}}
        recipe, cluster = run_recipe(fake)
        profile = _profile(recipe)
        model = CostModel.for_recipe(recipe, cluster, profile, **({"eff": eff} if eff is not None else {}))
        for name, (sp, rc) in PER_LAYER_VARIANTS.items():
            s = Strategy(tp=cfg["tp"], microbatch=cfg["microbatch"], recompute=rc, sequence_parallel=sp)
            topo = model.topology(s)
            table = model.table(s, cfg["microbatch"], topo, model.rate(s, topo.used_per_node))
            c = table.costs[1]  # the first transformer block
            measured = run["measured"]["per_layer_ms"][name]
            rows.append((name, "fwd", measured["fwd"], 1e3 * (c.forward_s + c.tp_forward_s)))
            rows.append((name, "bwd", measured["bwd"], 1e3 * (c.backward_s + c.tp_backward_s + c.recompute_s)))
    return rows


def zero_cell_error(paper: float, ours: float) -> float:
    """Relative error beyond the rounding of the printed cell (0.12 stands for [0.115, 0.125))."""
    text = repr(float(paper))
    decimals = len(text.split(".")[1].rstrip("0")) if "." in text else 0
    half_unit = 0.5 * 10 ** (-decimals)
    return max(0.0, abs(ours - paper) - half_unit) / paper


# Cloud TPU v3 core: 61.5 TFLOP/s bf16 (123 per 2-core chip), 16 GB HBM at ~450 GB/s per core,
# cores joined by the inter-core interconnect (~70 GB/s per link). Google Cloud TPU docs.
TPU_V3_CORE = {"device": {"name": "tpu-v3-core", "memory_GB": 16, "peak_tflops": {"bf16": 61.5, "fp32": 15},
                          "memory_bandwidth_GBps": 450}, "nodes": 1, "devices_per_node": 8,
               "intra_node": {"bandwidth_GBps": 70, "latency_us": 5}}


def gpipe_rows(runs: list[dict[str, Any]], microbatch: int = 4) -> list[tuple[int, int, float, float]]:
    """(K stages, M micro-batches, measured, predicted) normalised throughput of GPipe's
    Transformer-48 (Huang et al. 2019, Table 2; normalised to K=2, M=1), GPipe schedule
    with re-materialisation. The micro-batch size is not stated; `microbatch` is assumed."""
    run = next((r for r in runs if r["id"] == "gpipe_tpu_transformer"), None)
    if run is None:
        return []
    m = run["model"]
    model = {"family": "gpt", "layers": m["layers"], "hidden": m["hidden"], "heads": m["heads"], "seq_len": m["seq_len"],
             "vocab": m["vocab"], "ffn_hidden": m["ffn_hidden"]}
    cluster = parse_cluster(TPU_V3_CORE)
    measured = run["measured"]["normalized_throughput_K2_K4_K8"]
    throughput = {}
    profile = None
    for M in run["config"]["microbatches"]:
        recipe = parse_recipe({"model": model, "data": {"samples": 10**6},
                               "training": {"global_batch": M * microbatch, "precision": "bf16", "optimizer": "adam"}})
        profile = profile or _profile(recipe)
        cm = CostModel.for_recipe(recipe, cluster, profile)
        for K in run["config"]["pp"]:
            s = Strategy(pp=K, microbatch=microbatch, schedule=Schedule.GPIPE, recompute=Recompute.FULL)
            throughput[K, M] = recipe.training.global_batch / cm.estimate(s, check=False).step_time_s
    base = throughput[2, 1]
    return [(K, M, measured[f"M={M}"][i], throughput[K, M] / base)
            for M in run["config"]["microbatches"] for i, K in enumerate(run["config"]["pp"])]
