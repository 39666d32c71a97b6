"""The house's boundaries: planning never loads the runtime, and a run executes the very
pipeline layout the cost model predicted (one default layout, not two)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autopar.cost.model import CostModel
from autopar.spec.cluster import parse_cluster
from autopar.spec.recipe import parse_recipe
from autopar.spec.strategy import Strategy

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
# the head of a 4,096-token vocabulary outweighs a 32-wide block: the balanced cut is 4/2, not 3/3
GPT = {"model": {"family": "gpt", "layers": 6, "hidden": 32, "heads": 4, "seq_len": 16, "vocab": 4096},
       "data": {"samples": 64}, "training": {"global_batch": 8, "optimizer": "sgd", "precision": "fp32"},
       "cluster": {"preset": "cpu-local", "nodes": 1, "devices_per_node": 2}}

LOADED_BY_PLANNING = """
import sys
from autopar.cli.main import main
code = main(sys.argv[1:])
# what only the runtime needs (torch's own tracing, torch._dynamo, loads fsdp and DDP by itself)
heavy = ("torch.distributed.pipelining", "torch.distributed.checkpoint", "torch.distributed.optim",
         "torch.distributed.run", "torch.distributed.elastic", "torch.distributed.algorithms.model_averaging")
loaded = sorted(m for m in sys.modules if m.startswith("autopar.runtime") or m.startswith(heavy)
                or (m.startswith("autopar.techniques.") and m.endswith(".apply")))
print("LOADED", loaded, file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("command", [["plan", "examples/gpt3-175b.yaml", "--why", "dp=128,zero=3"],
                                     ["estimate", "examples/gpt3-175b.yaml", "--strategy", "dp=16,tp=8,pp=8,microbatch=1"],
                                     ["profile", "examples/gpt3-175b.yaml"]], ids=lambda c: c[0])
def test_planning_never_imports_the_runtime(command):
    proc = subprocess.run([sys.executable, "-c", LOADED_BY_PLANNING, *command], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "LOADED []" in proc.stderr, proc.stderr[-2000:]


def test_with_stages_writes_the_layout_the_estimate_prices():
    recipe = parse_recipe(GPT)
    model = CostModel.for_recipe(recipe, parse_cluster(GPT["cluster"]))
    for text in ("pp=2,microbatch=2", "pp=2,microbatch=1,schedule=gpipe", "pp=2,virtual_stages=2,schedule=interleaved,microbatch=2"):
        s = Strategy.parse(text)
        assert model.with_stages(s).stages == model.estimate(s).stages is not None
    assert model.with_stages(Strategy.parse("pp=2,stages=5/1")).stages == (5, 1)
    assert model.estimate(Strategy.parse("pp=2,microbatch=2")).stages != (3, 3)  # the case where an even split would differ


def test_run_executes_the_predicted_layout(tmp_path):
    """`autopar run` (a real two-process pipeline) runs the stages `autopar estimate` predicts,
    with `stages=` and without; its report carries that same prediction."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(GPT))
    for text in ("pp=2,microbatch=2", "pp=2,microbatch=2,stages=4/2"):
        est = subprocess.run([sys.executable, "-m", "autopar.cli.main", "estimate", str(recipe), "--strategy", text, "--json"],
                             env=ENV, capture_output=True, text=True, timeout=120)
        assert est.returncode == 0, est.stderr
        predicted = json.loads(est.stdout)["predicted"]["stages"]
        run = subprocess.run([sys.executable, "-m", "autopar.cli.main", "run", str(recipe), "--strategy", text, "--steps", "2", "--json"],
                             env=ENV, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        report = json.loads(run.stdout[run.stdout.index("{"):])
        executed = next(a for a in report["applied"] if a.startswith("pipeline("))
        assert executed.endswith(f"blocks {'/'.join(map(str, predicted))})"), (executed, predicted)
        assert report["predicted"]["predicted"]["stages"] == predicted


def test_profile_estimate_and_plan_reload_from_json():
    """Saved records load back equal: a replayed plan is the plan that was made."""
    from autopar.cost.estimate import Estimate
    from autopar.plan.planner import plan
    from autopar.plan.result import PlanResult
    from autopar.profile.profiler import profile_recipe
    from autopar.profile.types import ModelProfile
    from autopar.spec.recipe import load_recipe

    recipe = load_recipe(ROOT / "examples/gpt3-175b.yaml")
    cluster = parse_cluster(recipe.cluster)
    profile = profile_recipe(recipe)
    again = ModelProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert again == profile
    assert len({id(lp.stats) for lp in again.layers}) == len({id(lp.stats) for lp in profile.layers})  # shared per group
    fresh, reloaded = CostModel.for_recipe(recipe, cluster, profile), CostModel.for_recipe(recipe, cluster, again)
    for text in ("dp=16,tp=8,pp=8,microbatch=1", "dp=128,tp=8,zero=3,microbatch=2,recompute=selective,sequence_parallel=true"):
        e = fresh.estimate(Strategy.parse(text))
        assert reloaded.estimate(Strategy.parse(text)) == e
        assert Estimate.from_dict(json.loads(json.dumps(e.to_dict()))) == e
    result = plan(recipe, cluster, profile=profile)
    back = PlanResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert [p.estimate for p in back.plans] == [p.estimate for p in result.plans]
    assert back.rejected == result.rejected and back.profile == profile and back.recipe_key == result.recipe_key
