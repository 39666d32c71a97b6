"""Mixture of experts and expert parallelism (models/moe.py, techniques/expert): the profile
counts what the layer computes, the rules refuse what the runtime cannot run, the cost
model prices the split experts, and the planner picks ep > 1 where it must win.
(Runs equal to single-process training: tests/test_runtime_equivalence.py, case "moe".)"""

from pathlib import Path

import pytest
import torch
import yaml

from autopar.cost.model import CostModel
from autopar.models import build_model
from autopar.plan.planner import plan
from autopar.profile.profiler import profile_recipe
from autopar.spec.cluster import parse_cluster
from autopar.spec.enums import Precision
from autopar.spec.recipe import parse_recipe
from autopar.spec.strategy import Strategy
from autopar.techniques import plan_problem

ROOT = Path(__file__).resolve().parent.parent
H, F, E, K, T = 64, 96, 4, 2, 16  # hidden, expert width, experts, top k, tokens per sample
MOE = {"family": "llama", "layers": 2, "hidden": H, "heads": 4, "seq_len": T, "vocab": 100, "experts": E, "top_k": K, "ffn_hidden": F}


def _recipe(model=MOE, batch=8, **training):
    return parse_recipe({"model": model, "data": {"samples": 1024}, "training": {"global_batch": batch, **training}})


def test_a_moe_block_costs_what_its_tokens_route_to():
    """Per sample, each of T tokens passes attention and K of E SwiGLU experts: the profile's
    FLOPs are the hand count (the meta build spreads rows evenly: the count does not depend on it)."""
    profile = profile_recipe(_recipe())
    block = profile.layers[1].stats
    attention = T * 4 * 2 * H * H + 2 * 2 * T * T * H  # q, k, v, o projections + QK^T and AV
    experts = T * K * 2 * 3 * H * F  # (token, choice) rows through w1, w3, w2
    router = T * 2 * H * E
    assert block.forward_flops == pytest.approx(attention + experts + router, rel=1e-12)
    assert block.expert_flops == pytest.approx(experts, rel=1e-12)
    assert block.expert_params == E * 3 * H * F
    assert block.dispatch_bytes == T * K * H * profile.dtype_bytes  # rows in the activation dtype, one way
    assert sum(g.expert for g in block.gemms) == 3 * E


def test_the_layer_is_its_experts_weighted_sum():
    """y_t = sum over t's top-k experts of p_e / sum p * expert_e(x_t), written out per token."""
    mdef = build_model(parse_recipe({"model": MOE, "data": {"samples": 8}, "training": {"global_batch": 8}}).model, "cpu", torch.float64)
    moe = mdef.module.layers[0].mlp
    x = torch.randn(2, T, H, dtype=torch.float64)
    got = moe(x).reshape(-1, H)
    tokens = x.reshape(-1, H)
    probs = torch.softmax(moe.router(tokens), -1)
    want = torch.zeros_like(tokens)
    for t in range(tokens.shape[0]):
        weights, chosen = probs[t].topk(K)
        for w, e in zip(weights / weights.sum(), chosen):
            ex = moe.experts
            hidden = torch.nn.functional.silu(tokens[t] @ ex.w1[e]) * (tokens[t] @ ex.w3[e])
            want[t] += w * (hidden @ ex.w2[e])
    assert torch.allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("text, needle", [
    ("dp=2,ep=3", "ep(3) must divide experts(4)"),
    ("dp=2,tp=1,ep=4", "ep(4) must divide dp(2)"),
    ("dp=2,ep=2,zero=1", "ZeroRedundancyOptimizer"),
    ("dp=4,ep=2,zero=3,dp_shard=2", "not built"),
    ("dp=2,ep=2,zero=3,offload=true", "not built"),
    ("dp=2,ep=2,sync=async", "synchronous"),
    ("tp=2,sequence_parallel=true", "sequence-sharded"),
])
def test_what_the_runtime_cannot_run_is_refused(text, needle):
    facts = profile_recipe(_recipe()).facts
    problem = plan_problem(Strategy.parse(text), facts, 8, Precision.FP32, None)
    assert problem is not None and needle in problem, problem


def test_a_dense_model_has_no_experts_to_split():
    dense = {k: v for k, v in MOE.items() if k not in ("experts", "top_k")}
    problem = plan_problem(Strategy(dp=2, ep=2), profile_recipe(_recipe(dense)).facts, 8, Precision.FP32, None)
    assert "needs mixture-of-experts layers" in problem


def test_split_experts_hold_1_over_ep_of_the_expert_states_and_pay_all_to_alls():
    """GPT-MoE on 8 A100s: per device, expert states fall by ep (and are not ZeRO-sharded);
    the dispatch costs 4 all-to-alls per layer per micro-batch over NVLink."""
    recipe = _recipe({"family": "gpt", "layers": 4, "hidden": 1024, "heads": 16, "seq_len": 1024, "vocab": 32000, "experts": 8, "top_k": 2},
                     batch=64, optimizer="adam", precision="bf16")
    cluster = parse_cluster({"preset": "dgx-a100-80gb", "nodes": 1})
    model = CostModel.for_recipe(recipe, cluster)
    stats = model.profile.layers[1].stats
    dense, split = model.estimate(Strategy(dp=8)), model.estimate(Strategy(dp=8, ep=8))
    per_param = sum(model.per_param)
    saved = stats.expert_params * 4 * (1 - 1 / 8) * per_param  # 4 blocks
    assert dense.memory_per_device_bytes - split.memory_per_device_bytes == pytest.approx(saved, rel=1e-6)
    assert dense.time_breakdown_s["ep_comm"] == 0
    b = 64 // 8
    link = cluster.intra_node.bandwidth_Bps * model.eff.collective_intra
    a2a = 7 / 8 * stats.dispatch_bytes * b / link  # + latency, tiny
    assert split.time_breakdown_s["ep_comm"] >= 4 * 4 * a2a
    # the same ZeRO-3 step, experts split or gathered: ZeRO-3 moves every expert's weights
    assert model.estimate(Strategy(dp=8, zero=3)).time_breakdown_s["dp_comm"] > model.estimate(Strategy(dp=8, ep=8, zero=3)).time_breakdown_s["dp_comm"]


def test_expert_gemms_are_taller_under_expert_parallelism():
    """ep ranks' rows meet at each expert: the same FLOPs in ep-fold taller GEMMs, which run at
    a higher fraction of peak (cost/compute.py gemm_efficiency), so the experts' time falls."""
    recipe = _recipe({**MOE, "hidden": 512, "ffn_hidden": 512, "experts": 16}, batch=16, precision="bf16", optimizer="adam")
    model = CostModel.for_recipe(recipe, parse_cluster({"preset": "dgx-a100-80gb", "nodes": 1}))
    one, split = (model.estimate(Strategy(dp=8, ep=e)).time_breakdown_s["compute"] for e in (1, 8))
    assert split < one


def test_a_64_expert_moe_on_8_nodes_splits_its_experts():
    """examples/moe-64e.yaml (Mixtral-sized experts, batch 64 on 64 A100s): ZeRO-3 would gather
    103B parameters' worth of experts every step; splitting them costs only the tokens'
    all-to-alls, and leaves no pipeline bubble."""
    raw = yaml.safe_load((ROOT / "examples" / "moe-64e.yaml").read_text())
    cluster = parse_cluster(raw.pop("cluster"))
    result = plan(parse_recipe(raw), cluster)
    best = result.plans[0]
    assert best.strategy.ep > 1, best.strategy.to_text()
    assert "Expert parallel" in best.explanation
    zero3 = next(r for r in result.rejected if r.family.startswith("fully sharded"))
    assert "synchronisation" in zero3.reason


def test_transformers_mixtral_with_64_experts_splits_them_too():
    """The same recipe written as a transformers MixtralConfig: its stacked experts
    (MixtralExperts) are found on the meta device and split by ep as the built-in's are."""
    raw = yaml.safe_load((ROOT / "examples" / "moe-64e.yaml").read_text())
    cluster = parse_cluster(raw.pop("cluster"))
    raw["model"] = {"transformers": {"config": "MixtralConfig", "num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 4096,
                                     "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 32000,
                                     "num_local_experts": 64, "num_experts_per_tok": 2, "seq_len": 4096}}
    result = plan(parse_recipe(raw), cluster)
    assert result.plans[0].strategy.ep > 1, result.plans[0].strategy.to_text()
    assert result.plans[0].estimate.time_breakdown_s["ep_comm"] > 0
