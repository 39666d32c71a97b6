"""One set of rules (the techniques') for the planner, the cost model and the runtime.

The planner must never propose what `autopar run` refuses: every plan passes the
runtime's preflight (called directly; no process starts). The facts the rules read come
from the profile; the space's pre-filters reject only what the rules reject (or their
named restrictions).
"""

import pytest
import torch

from autopar import techniques
from autopar.cost.model import CostModel
from autopar.plan import space
from autopar.plan.planner import plan
from autopar.profile.profiler import profile_model
from autopar.runtime.launch import preflight
from autopar.spec.cluster import parse_cluster
from autopar.spec.enums import Precision
from autopar.spec.recipe import load_recipe, parse_recipe
from autopar.spec.strategy import Strategy
from autopar.techniques import InvalidStrategy
from autopar.techniques.subnet.space import MAX_SUBNET_WORKERS

MLP = {"model": {"family": "mlp", "input_dim": 64, "widths": [128, 128, 128], "classes": 10},
       "data": {"samples": 1000}, "training": {"global_batch": 64, "optimizer": "adam", "precision": "fp32"}}
FOUR_CORES = {"preset": "cpu-local", "nodes": 1, "devices_per_node": 4}
CPU = {"preset": "cpu-local", "nodes": 1}  # the example recipes say `local`; these checks need fixed numbers


def _gpt_small():
    recipe = load_recipe("examples/gpt-small.yaml")
    return recipe, parse_cluster(CPU)


def _wide_linear():
    recipe = load_recipe("examples/wide-linear.yaml")
    return recipe, parse_cluster(CPU)


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


FACTS = [  # family, facts the profile must record (what the rules then read)
    ({"family": "gpt", "layers": 4, "hidden": 32, "heads": 4, "seq_len": 16, "vocab": 64},
     {"layers": 4, "seq_len": 16, "attention_cores": 4, "feature_dim": None, "hidden_widths": (128,) * 4, "mlp_layers": False,
      "tp_units": (("heads", 4), ("layers.*.attn.q.out_features", 32))}),
    ({"family": "llama", "layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2, "seq_len": 16, "vocab": 64, "multiple_of": 16},
     {"layers": 2, "seq_len": 16, "attention_cores": 2, "feature_dim": None, "mlp_layers": False}),
    ({"family": "mlp", "input_dim": 16, "widths": [32, 32], "classes": 4},
     {"layers": 3, "seq_len": None, "attention_cores": 0, "feature_dim": 16, "hidden_widths": (32, 32), "mlp_layers": True}),
    ({"family": "cnn", "depth": 2, "width": 8, "image_size": 8, "classes": 4},
     {"seq_len": None, "attention_cores": 0, "feature_dim": None, "hidden_widths": (), "tp_plan": (), "mlp_layers": False}),
    ({"family": "wide_linear", "input_dim": 1000, "hidden": 16, "classes": 2},
     {"layers": 2, "feature_dim": 1000, "hidden_widths": (16,), "attention_cores": 0}),
]


@pytest.mark.parametrize("raw,expected", FACTS, ids=[f[0]["family"] for f in FACTS])
def test_the_profile_records_the_facts_the_rules_read(raw, expected):
    spec = parse_recipe({"model": raw, "data": {"samples": 8}, "training": {"global_batch": 8}}).model
    facts = profile_model(spec, Precision.FP32).facts
    got = {k: getattr(facts, k) for k in expected}
    if "tp_units" in expected:
        got["tp_units"] = got["tp_units"][:2]
    assert got == expected


def test_the_runtime_applies_the_plan_the_profile_found():
    """A module without a declared tp_plan: the runtime's model gets the facts' plan."""
    from autopar.runtime.train import build_for

    recipe = parse_recipe({"model": {"module": "tests.fixtures.user_models:two_tower", "kwargs": {"hidden": 64},
                                     "inputs": [{"shape": [32]}, {"shape": [48]}]}, "data": {"samples": 8}, "training": {"global_batch": 8}})
    mdef = build_for(recipe, Strategy(tp=2), "cpu", torch.float32)
    assert mdef.tp_plan == dict(profile_model(recipe.model, recipe.training.precision).facts.tp_plan) != {}


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
        s = space.neutral(c)
        restricted = (s.subnet and s.dp > MAX_SUBNET_WORKERS) or (s.data_partition.value == "features" and s.dp == 1)
        valid = techniques.plan_problem(s, ctx.facts, ctx.global_batch, ctx.precision, cluster) is None
        if valid and not restricted:
            assert tuple(sorted(c.items())) in kept, s.to_text()
