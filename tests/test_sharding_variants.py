"""HSDP (dp_shard) and host offload: in the strategy vocabulary, priced, searched, explained,
and chosen where they must win (runtime equivalence: tests/test_runtime_equivalence.py)."""

import pytest

from autopar.cost.model import CostModel
from autopar.errors import InputError
from autopar.plan.planner import plan
from autopar.profile.profiler import profile_recipe
from autopar.spec.cluster import parse_cluster
from autopar.spec.recipe import parse_recipe
from autopar.spec.strategy import Strategy
from autopar.techniques import plan_problem

GPT_1B = {"family": "gpt", "layers": 24, "hidden": 2048, "heads": 16, "seq_len": 2048, "vocab": 50257}
GPT_7B = {"family": "gpt", "layers": 32, "hidden": 4096, "heads": 32, "seq_len": 2048, "vocab": 51200}
TRAIN = {"optimizer": "adam", "precision": "bf16", "steps": 100}


def _recipe(model, batch):
    return parse_recipe({"model": model, "data": {"samples": 10**6}, "training": {"global_batch": batch, **TRAIN}})


@pytest.fixture(scope="module")
def gpt7b():
    recipe = _recipe(GPT_7B, 64)
    return recipe, profile_recipe(recipe)


def test_text_form_round_trips():
    s = Strategy.parse("dp=16,zero=3,dp_shard=8")
    assert (s.dp_shard, s.shard_size, Strategy.parse(s.to_text())) == (8, 8, s)
    assert Strategy.parse("dp=8,zero=3,dp_shard=8").dp_shard is None  # all dp ranks: plain ZeRO-3
    assert Strategy.parse("zero=3,offload=true").to_text() == "zero=3,offload=true"


@pytest.mark.parametrize("text,reason", [
    ("dp=4,zero=1,dp_shard=2", "zero=2 or zero=3"),
    ("dp=8,zero=3,dp_shard=3", "dp_shard must divide dp"),
    ("dp=2,zero=2,offload=true", "use zero=3"),
    ("dp=2,zero=3,offload=true,sync=async", "synchronous"),
])
def test_rules_refuse_what_fsdp2_cannot_run(gpt7b, text, reason):
    problem = plan_problem(Strategy.parse(text), gpt7b[1].facts, 64, None, None)
    assert problem is not None and reason in problem, problem


def test_hsdp_moves_a_replica_shard_across_nodes_not_the_model(gpt7b):
    """64 ranks on 8 nodes: ZeRO-3 gathers every layer over the network; HSDP gathers inside
    a node and all-reduces 1/8 of the gradients across nodes."""
    recipe, profile = gpt7b
    slow = parse_cluster({"preset": "dgx-a100-80gb", "nodes": 8, "inter_node": {"bandwidth_GBps": 25}})
    model = CostModel.for_recipe(recipe, slow, profile)
    full, hsdp = model.estimate(Strategy.parse("dp=64,zero=3")), model.estimate(Strategy.parse("dp=64,zero=3,dp_shard=8"))
    assert hsdp.time_breakdown_s["dp_comm"] < full.time_breakdown_s["dp_comm"] / 4
    assert hsdp.memory_breakdown_bytes["optimizer"] == pytest.approx(full.memory_breakdown_bytes["optimizer"] * 8)


def test_hsdp_wins_when_the_network_is_slow():
    recipe = _recipe(GPT_1B, 256)
    slow = parse_cluster({"preset": "dgx-a100-80gb", "nodes": 8, "inter_node": {"bandwidth_GBps": 25}})
    best = plan(recipe, slow, top_k=3)
    s = best.plans[0].strategy
    assert s.dp_shard == 8 and s.zero >= 2, s.to_text()
    assert "HSDP" in best.plans[0].explanation


def test_offload_trains_a_model_one_device_cannot_hold(gpt7b):
    """ZeRO-Offload's case (Ren et al. 2021: 13B on one V100): 7B with Adam needs ~113 GB of
    states; on a single 80 GB A100 only offload fits."""
    recipe, profile = gpt7b
    one = parse_cluster({"preset": "dgx-a100-80gb", "devices_per_node": 1})
    best = plan(recipe, one, top_k=3, profile=profile)
    assert all(p.strategy.offload for p in best.plans)
    assert "host memory" in best.plans[0].explanation
    why = {r.family: r.reason for r in best.rejected}
    assert "80 GB" in why["single device"]


def test_offload_is_refused_when_host_memory_is_short(gpt7b):
    recipe, profile = gpt7b
    small_host = parse_cluster({"preset": "dgx-a100-80gb", "devices_per_node": 1, "host_memory_GB": 64})
    e = CostModel.for_recipe(recipe, small_host, profile).estimate(Strategy.parse("zero=3,offload=true,microbatch=8,recompute=full"))
    assert not e.fits and "host memory" in e.reason
    with pytest.raises(InputError, match="fits nowhere"):
        plan(recipe, small_host, profile=profile, advise=False)


def test_offload_is_never_searched_on_cpu_cores():
    recipe = parse_recipe({"model": {"family": "mlp", "input_dim": 64, "widths": [64], "classes": 4}, "data": {"samples": 1024},
                           "training": {"global_batch": 64, "precision": "fp32"}})
    cpu = parse_cluster({"preset": "cpu-local"})
    best = plan(recipe, cpu, top_k=5)
    assert not any(p.strategy.offload for p in best.plans)
    why = {r.family: r.reason for r in best.rejected}
    assert "share the host's memory" in why["host offload (ZeRO-Offload)"]


def test_offload_saves_devices_under_the_devices_objective():
    """A 1.9B fp32 GPT on a PCIe V100 node: its Adam states alone (~30 GB) overfill one
    32 GB device, so without offload it needs ZeRO-3 over several; --objective devices
    (device-seconds to train) picks offload on one V100, --objective time all eight."""
    from autopar.plan.result import Objective

    model = {"family": "gpt", "layers": 24, "hidden": 2560, "heads": 20, "seq_len": 1024, "vocab": 50257}
    recipe = parse_recipe({"model": model, "data": {"samples": 10**6},
                           "training": {"global_batch": 16, "optimizer": "adam", "precision": "fp32", "steps": 100}})
    node = parse_cluster({"preset": "v100-pcie-node", "nodes": 1})
    lean = plan(recipe, node, objective=Objective.DEVICES, top_k=2).plans[0]
    assert lean.strategy.offload and lean.estimate.devices_used == 1, lean.strategy.to_text()
    alone = CostModel.for_recipe(recipe, node).estimate(Strategy(zero=3, microbatch=1))
    assert not alone.fits
    fast = plan(recipe, node, top_k=1).plans[0]
    assert not fast.strategy.offload and fast.estimate.devices_used == 8, fast.strategy.to_text()
