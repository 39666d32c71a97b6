"""The planner returns the cost model's optimum over the whole space: its plans equal a brute
force over every point (autopar.plan.oracle), and the monotonicity its floors rely on holds.

The cases marked slow (bigger spaces, GPT-3 175B on 1,024 GPUs: ~600,000 points) run with
`pytest -m slow` and in benchmarks/plan_oracle.py; CI runs the rest.
"""

import random

import pytest

from autopar.cost.model import CostModel
from autopar.plan.oracle import brute_force
from autopar.plan.planner import plan
from autopar.plan.result import Objective, score
from autopar.profile.profiler import profile_recipe
from autopar.spec.cluster import parse_cluster
from autopar.spec.enums import Recompute
from autopar.spec.recipe import parse_recipe
from autopar.spec.strategy import Strategy
from autopar.util import divisors


def _recipe(model, batch, **training):
    return parse_recipe({"model": model, "data": {"samples": 10**6}, "training": {"global_batch": batch, **training}})


GPT_125M = {"family": "gpt", "layers": 12, "hidden": 768, "heads": 12, "seq_len": 2048, "vocab": 50257}
GPT_1B = {"family": "gpt", "layers": 24, "hidden": 2048, "heads": 16, "seq_len": 2048, "vocab": 50257}
GPT_4B = {"family": "gpt", "layers": 32, "hidden": 3200, "heads": 25, "seq_len": 1024, "vocab": 50257}
LLAMA_7B = {"family": "llama", "layers": 32, "hidden": 4096, "heads": 32, "seq_len": 4096, "vocab": 32000}
GPT3 = {"family": "gpt", "layers": 96, "hidden": 12288, "heads": 96, "seq_len": 2048, "vocab": 51200, "dropout": 0.1}
MOE_16 = {"family": "llama", "layers": 16, "hidden": 2048, "heads": 16, "seq_len": 2048, "vocab": 32000, "experts": 16, "top_k": 2,
          "ffn_hidden": 4096}
LLAMA_32K = {"family": "llama", "layers": 16, "hidden": 2048, "heads": 16, "kv_heads": 4, "seq_len": 32768, "vocab": 32000}
V100_16 = {"preset": "v100-pcie-node", "device": {"name": "v100-16gb", "memory_GB": 16, "peak_tflops": {"fp32": 15.7, "fp16": 125},
                                                  "memory_bandwidth_GBps": 900}, "nodes": 1}
DGX = {"preset": "dgx-a100-80gb"}

CASES = {  # name: (model, global batch, training keys, cluster, --fix, objective)
    "gpt-125m, 1 node": (GPT_125M, 256, {}, {**DGX, "nodes": 1}, None, Objective.TIME),
    "mlp on this CPU": ({"family": "mlp", "input_dim": 784, "widths": [512, 512], "classes": 10}, 256, {"precision": "fp32"},
                        {"preset": "cpu-local"}, None, Objective.TIME),
    "gpt-4b fp32 on 16 GB V100s (needs ZeRO-3 + recompute)": (GPT_4B, 64, {"precision": "fp32", "optimizer": "adam"}, V100_16, None,
                                                             Objective.TIME),
    "gpt-4b, pipelines only (--fix pp=4)": (GPT_4B, 64, {"precision": "fp32", "optimizer": "adam"}, V100_16, {"pp": 4}, Objective.TIME),
    "gpt-125m, 2 nodes, device-seconds": (GPT_125M, 64, {}, {**DGX, "nodes": 2}, None, Objective.DEVICES),
    "gpt-1.3b, 4 nodes on a 25 GB/s network (HSDP)": (GPT_1B, 64, {"optimizer": "adam", "precision": "bf16"},
                                                       {**DGX, "nodes": 4, "inter_node": {"bandwidth_GBps": 25}}, None, Objective.TIME),
    "gpt-4b on one A100 (host offload)": (GPT_4B, 32, {"optimizer": "adam", "precision": "bf16"},
                                          {**DGX, "nodes": 1, "devices_per_node": 1}, None, Objective.TIME),
    "16-expert moe, 2 nodes, batch 16 (expert parallel)": (MOE_16, 16, {"optimizer": "adam", "precision": "bf16"}, {**DGX, "nodes": 2},
                                                          None, Objective.TIME),
    "llama-1b at 32k tokens, 2 nodes (context parallel)": (LLAMA_32K, 8, {"optimizer": "adam", "precision": "bf16"}, {**DGX, "nodes": 2},
                                                           None, Objective.TIME),
    "gpt-1.3b, 2 nodes, throughput": (GPT_1B, 64, {"optimizer": "adam", "precision": "bf16"}, {**DGX, "nodes": 2}, None,
                                      Objective.THROUGHPUT),
}
SLOW = {
    "gpt-1.3b, 2 nodes": (GPT_1B, 64, {"optimizer": "adam", "precision": "bf16"}, {**DGX, "nodes": 2}, None, Objective.TIME),
    "llama-7b, 4 nodes": (LLAMA_7B, 128, {"optimizer": "adam", "precision": "bf16"}, {**DGX, "nodes": 4}, None, Objective.TIME),
    "gpt3-175b, 1024 A100": (GPT3, 1536, {"optimizer": "adam", "precision": "bf16"}, {**DGX, "nodes": 128}, None, Objective.TIME),
}


def _check(model, batch, training, cluster_spec, fix, objective):
    recipe, cluster = _recipe(model, batch, **training), parse_cluster(cluster_spec)
    profile = profile_recipe(recipe)
    found = plan(recipe, cluster, fix=fix, objective=objective, profile=profile, top_k=5)
    truth = brute_force(recipe, cluster, fix=fix, objective=objective, profile=profile, keep=5)
    ours = [score(p.estimate, objective) for p in found.plans]
    best = [score(e, objective) for e in truth.best]
    assert ours == pytest.approx(best, rel=1e-9), (
        f"planner {[p.strategy.to_text() for p in found.plans]} vs brute force {[e.strategy.to_text() for e in truth.best]}")
    assert found.candidates < truth.candidates


@pytest.mark.parametrize("case", list(CASES))
def test_plans_equal_the_brute_force_best(case):
    _check(*CASES[case])


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SLOW))
def test_plans_equal_the_brute_force_best_on_big_spaces(case):
    _check(*SLOW[case])


def test_the_floors_hold_per_sample_time_falls_and_activations_grow_with_the_micro_batch():
    """plan/planner.py bounds a structure by its largest micro-batch: per-sample step time of
    the pipeline must not grow with the micro-batch, activations not shrink."""
    rng = random.Random(3)
    recipe = _recipe(GPT_1B, 96, optimizer="adam", precision="bf16")
    model = CostModel.for_recipe(recipe, parse_cluster({**DGX, "nodes": 2}))
    for _ in range(40):
        tp, pp = rng.choice([1, 2, 4, 8]), rng.choice([1, 2])
        dp = rng.choice([d for d in (1, 2) if d * tp * pp <= 16])
        sp = tp > 1 and rng.random() < 0.5
        rc = rng.choice(list(Recompute))
        local = 96 // dp
        per_sample, acts = [], []
        for b in [d for d in divisors(local) if local // d >= pp]:
            s = Strategy(dp=dp, tp=tp, pp=pp, microbatch=b, sequence_parallel=sp, recompute=rc)
            topo = model.topology(s)
            table = model.table(s, b, topo, model.rate(s, topo.used_per_node))
            per_sample.append(table.time[-1] / b)
            acts.append(table.prefix["activation_bytes"][-1])
        assert all(x >= y * (1 - 1e-12) for x, y in zip(per_sample, per_sample[1:])), per_sample
        assert all(x <= y for x, y in zip(acts, acts[1:])), acts


@pytest.mark.parametrize("model,tp,cp,ep", [(GPT_1B, 2, 1, 1), (LLAMA_32K, 2, 2, 1), (MOE_16, 1, 1, 2)])
def test_the_floors_hold_bytes_are_linear_in_the_micro_batch(model, tp, cp, ep):
    """plan/bounds.py reads memory floors from one sample's layer table: every byte term at
    micro-batch b is b times its value there, and parameters do not depend on b."""
    recipe = _recipe(model, 64, optimizer="adam", precision="bf16")
    cost = CostModel.for_recipe(recipe, parse_cluster({**DGX, "nodes": 2}))
    for sp in ([False, True] if tp > 1 else [False]):
        for rc in Recompute:
            s = Strategy(dp=4, tp=tp, cp=cp, ep=ep, sequence_parallel=sp, recompute=rc)
            topo = cost.topology(s)
            rate = cost.rate(s, topo.used_per_node)
            one = cost.table(s, 1, topo, rate)
            for b in (2, 3, 8):
                at_b = cost.table(s, b, topo, rate)
                for field in ("activation_bytes", "working_bytes", "output_bytes"):
                    assert [getattr(c, field) for c in at_b.costs] == pytest.approx([b * getattr(c, field) for c in one.costs], rel=1e-12)
                assert [c.params for c in at_b.costs] == [c.params for c in one.costs]


def test_the_exact_memory_check_of_zbv_is_its_own_layout_not_the_interleaved_one():
    """NodeFloors.excess_bytes caches each rank's holdings per layout: ZB-V's V-shaped ranks
    at 2 chunks are not interleaved's looped ones at 2 (the cache was keyed by chunks alone,
    so a ZB-V setting checked after an interleaved one read the wrong ranks)."""
    from autopar.plan.bounds import NodeFloors
    from autopar.spec.enums import Schedule
    from autopar.techniques.data.space import Sharding

    recipe = _recipe(GPT_4B, 64, optimizer="adam", precision="bf16")
    cost = CostModel.for_recipe(recipe, parse_cluster({**DGX, "nodes": 1}))
    c = {"dp": 1, "tp": 1, "pp": 4, "threads": 1, "sync": Strategy().sync, "data_partition": Strategy().data_partition,
         "subnet": False}
    for rc in Recompute:
        fresh = NodeFloors(cost, c, 1, 64, [1]).excess_bytes(False, Schedule.ZBV, 2, rc, Sharding())
        warm = NodeFloors(cost, c, 1, 64, [1])
        warm.excess_bytes(False, Schedule.INTERLEAVED, 2, rc, Sharding())
        assert warm.excess_bytes(False, Schedule.ZBV, 2, rc, Sharding()) == fresh
        exact = cost.estimate(Strategy(pp=4, microbatch=1, schedule=Schedule.ZBV, virtual_stages=2, recompute=rc))
        assert fresh + warm.capacity_bytes == pytest.approx(exact.memory_per_device_bytes, rel=1e-12)
