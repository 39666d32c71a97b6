"""One set of rules (autopar.validity) for the planner, the cost model and the runtime.

The planner must never propose what `autopar run` refuses: every plan passes the
runtime's preflight (called directly; no process starts). Both fact builders agree;
the space's pre-filters reject only what the rules reject (or their named restrictions).
"""

import pytest

from autopar import validity
from autopar.cost.estimate import CostModel
from autopar.cost.validity import InvalidStrategy
from autopar.models import build_model
from autopar.plan import space
from autopar.plan.planner import plan
from autopar.profile.profiler import profile_model
from autopar.runtime.launch import preflight
from autopar.spec.cluster import parse_cluster
from autopar.spec.enums import Precision
from autopar.spec.recipe import load_recipe, parse_recipe
from autopar.spec.strategy import Strategy

MLP = {"model": {"family": "mlp", "input_dim": 64, "widths": [128, 128, 128], "classes": 10},
       "data": {"samples": 1000}, "training": {"global_batch": 64, "optimizer": "adam", "precision": "fp32"}}
FOUR_CORES = {"preset": "cpu-local", "nodes": 1, "devices_per_node": 4}


def _gpt_small():
    recipe = load_recipe("examples/gpt-small.yaml")
    return recipe, parse_cluster(recipe.cluster)


def _wide_linear():
    recipe = load_recipe("examples/wide-linear.yaml")
    return recipe, parse_cluster(recipe.cluster)


def _mlp(precision="fp32"):
    raw = {**MLP, "training": {**MLP["training"], "precision": precision}}
    return parse_recipe(raw), parse_cluster(FOUR_CORES)


RECIPES = {"gpt-small": _gpt_small, "wide-linear": _wide_linear, "mlp": _mlp, "mlp-fp16": lambda: _mlp("fp16")}


@pytest.mark.parametrize("name", RECIPES)
def test_every_plan_passes_the_runtime_preflight(name):
    recipe, cluster = RECIPES[name]()
    result = plan(recipe, cluster, top_k=40)
    assert len(result.plans) >= 5
    for p in result.plans:
        s = p.strategy
        preflight(recipe, s, nproc=s.devices, nnodes=1)  # raises InputError on any runtime problem


def test_runtime_runs_subnet_on_a_transformer_the_planner_does_not_price():
    recipe, cluster = _gpt_small()
    s = Strategy(dp=2, subnet=True, sync_every=4)
    preflight(recipe, s, nproc=2, nnodes=1)
    with pytest.raises(InvalidStrategy) as err:
        CostModel.for_recipe(recipe, cluster).estimate(s)
    assert "prices subnetwork training only over MLP layers" in str(err.value)
    assert all(not p.strategy.subnet for p in plan(recipe, cluster, top_k=40).plans)


def test_the_planner_checks_precision():
    """fp16's loss scaling runs only with DDP/ZeRO-1/local SGD/features."""
    recipe, cluster = _mlp("fp16")
    strategies = [p.strategy for p in plan(recipe, cluster, top_k=40).plans]
    assert all(s.zero < 2 and s.tp == 1 and s.pp == 1 and not s.subnet for s in strategies)


@pytest.mark.parametrize("raw", [
    {"family": "gpt", "layers": 4, "hidden": 32, "heads": 4, "seq_len": 16, "vocab": 64},
    {"family": "llama", "layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2, "seq_len": 16, "vocab": 64, "multiple_of": 16},
    {"family": "mlp", "input_dim": 16, "widths": [32, 32], "classes": 4},
    {"family": "cnn", "depth": 2, "width": 8, "image_size": 8, "classes": 4},
    {"family": "wide_linear", "input_dim": 1000, "hidden": 16, "classes": 2},
], ids=lambda r: r["family"])
def test_profile_and_model_give_the_same_facts(raw):
    spec = parse_recipe({"model": raw, "data": {"samples": 8}, "training": {"global_batch": 8}}).model
    from_model = validity.facts_from_model(build_model(spec, "meta"), spec)
    from_profile = validity.facts_from_profile(profile_model(spec, Precision.FP32))
    assert from_profile.layers <= from_model.layers
    assert from_profile.subnet_priced == (raw["family"] == "mlp")  # is_mlp_layer: a Linear pair inside one layer
    same = ("name", "has_tp_plan", "tp_units", "seq_len", "feature_dim", "hidden_widths", "attention_cores")
    assert {k: getattr(from_profile, k) for k in same} == {k: getattr(from_model, k) for k in same}


def _every_structure(ctx):
    """All structures of the space, no predicate applied."""
    def walk(i, partial):
        if i == len(space.STRUCTURE):
            yield dict(partial)
            return
        dim = space.STRUCTURE[i]
        for value in dim.values(ctx, partial):
            yield from walk(i + 1, {**partial, dim.name: value})
    yield from walk(0, {})


@pytest.mark.parametrize("name", RECIPES)
def test_space_predicates_reject_only_what_the_rules_reject(name):
    recipe, cluster = RECIPES[name]()
    model = CostModel.for_recipe(recipe, cluster)
    ctx = space.SearchContext(model.profile, cluster, recipe.training.global_batch, recipe.training.precision, max_tp=4)
    kept = {tuple(sorted(c.items())) for c in space.structures(ctx)}
    for c in _every_structure(ctx):
        s = space._neutral(c)
        restricted = (s.subnet and s.dp > space.MAX_SUBNET_WORKERS) or (s.data_partition.value == "features" and s.dp == 1)
        valid = validity.plan_problem(s, ctx.facts, ctx.global_batch, ctx.precision, cluster) is None
        if valid and not restricted:
            assert tuple(sorted(c.items())) in kept, s.to_text()
