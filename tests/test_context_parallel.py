"""Context parallelism (techniques/context): the zigzag split balances causal work, the
rules refuse what the runtime cannot run, the cost model splits each sample's work and
activations and prices the key/value gathers, and the planner picks cp > 1 for 128k-token
sequences. (Runs equal to single-process training: tests/test_runtime_equivalence.py,
cases "gpt-cp" and "llama-cp".)"""

import pytest

from autopar.cost import collectives as coll
from autopar.cost.model import CostModel
from autopar.plan.planner import plan
from autopar.profile.profiler import profile_recipe
from autopar.spec.cluster import parse_cluster
from autopar.spec.enums import Precision
from autopar.spec.recipe import parse_recipe
from autopar.spec.strategy import Strategy
from autopar.techniques import plan_problem
from autopar.techniques.context.apply import zigzag_positions

GPT = {"family": "gpt", "layers": 2, "hidden": 64, "heads": 4, "seq_len": 32, "vocab": 100}
# Llama 3 8B (Dubey et al. 2024, Table 3: 32 layers, 4096 wide, 8 kv heads, 14336 FFN, 128k vocabulary) at 131,072 tokens
LLAMA3_8B_128K = {"family": "llama", "layers": 32, "hidden": 4096, "heads": 32, "kv_heads": 8, "seq_len": 131072, "vocab": 128256,
                  "ffn_hidden": 14336}


def _recipe(model, batch=8, **training):
    return parse_recipe({"model": model, "data": {"samples": 10**6}, "training": {"global_batch": batch, **training}})


@pytest.mark.parametrize("cp", [2, 4, 8])
def test_zigzag_chunks_cover_the_sequence_and_balance_causal_work(cp):
    """Rank r holds chunks r and 2 cp - 1 - r: every position once, and each rank's queries see
    the same number of keys under the causal mask (sum of position + 1)."""
    T = 64
    parts = [zigzag_positions(T, r, cp) for r in range(cp)]
    assert sorted(int(p) for part in parts for p in part) == list(range(T))
    work = {int((part + 1).sum()) for part in parts}
    assert len(work) == 1, work


@pytest.mark.parametrize("text, needle", [
    ("cp=3", "2 * cp = 6 equal chunks"),
    ("cp=2,tp=2,sequence_parallel=true", "both split the sequence"),
    ("cp=2,tp=2", "use zero=2 or 3"),
    ("dp=2,cp=2,zero=3,offload=true", "not built"),
    ("dp=2,cp=2,sync=async", "synchronous"),
])
def test_what_the_runtime_cannot_run_is_refused(text, needle):
    problem = plan_problem(Strategy.parse(text), profile_recipe(_recipe(GPT)).facts, 8, Precision.FP32, None)
    assert problem is not None and needle in problem, problem


def test_only_the_built_in_decoders_take_positions():
    mlp = {"family": "mlp", "input_dim": 16, "widths": [32], "classes": 4}
    problem = plan_problem(Strategy(cp=2), profile_recipe(_recipe(mlp)).facts, 8, Precision.FP32, None)
    assert "splits the sequence of the built-in gpt/llama decoders" in problem


def test_each_rank_computes_and_holds_a_cp_th_of_each_sample_and_gathers_keys_and_values():
    recipe = _recipe({**GPT, "layers": 8, "hidden": 2048, "heads": 16, "seq_len": 16384, "vocab": 32000}, batch=8,
                     optimizer="adam", precision="bf16")
    cluster = parse_cluster({"preset": "dgx-a100-80gb", "nodes": 1})
    model = CostModel.for_recipe(recipe, cluster)
    one, split = model.estimate(Strategy(zero=3, microbatch=1)), model.estimate(Strategy(zero=3, cp=8, microbatch=1))
    acts = [e.memory_breakdown_bytes["activations"] for e in (one, split)]
    assert acts[1] == pytest.approx(acts[0] / 8, rel=0.05)
    assert split.time_breakdown_s["compute"] < one.time_breakdown_s["compute"] / 8 * 1.3  # smaller GEMMs run less efficiently
    kv = model.profile.layers[1].stats.kv_bytes  # per sample: 2 x 16384 x 2048 x 2 bytes
    assert kv == 2 * 16384 * 2048 * 2
    per_layer = 2 * coll.all_gather_s(kv, model.topology(split.strategy).cp, cluster, model.eff)
    assert split.time_breakdown_s["cp_comm"] == pytest.approx(8 * 8 * per_layer, rel=1e-9)  # 8 layers, 8 micro-batches


def test_llama3_8b_at_128k_tokens_splits_its_sequences():
    """32 H100s, 16 sequences of 131,072 tokens: without cp only tp x pp with host offload fits
    (one sample's activations); splitting each sequence over cp ranks is the plan, as Llama 3
    trained 128k context with cp = 16."""
    recipe = _recipe(LLAMA3_8B_128K, batch=16, optimizer="adam", precision="bf16")
    cluster = parse_cluster({"preset": "dgx-h100", "nodes": 4})
    result = plan(recipe, cluster)
    best = result.plans[0]
    assert best.strategy.cp > 1, best.strategy.to_text()
    assert "Context parallel" in best.explanation
    without = plan(recipe, cluster, fix={"cp": 1}, top_k=1).plans[0]
    assert best.estimate.step_time_s < 0.8 * without.estimate.step_time_s, without.strategy.to_text()
