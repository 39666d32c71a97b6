"""`autopar validate`: runs the planner's choice and the baselines, scores the predictions."""

import json

import yaml

from autopar.cli.main import main
from autopar.validation.local import ranks, spearman


def test_spearman_and_ranks():
    assert ranks([3.0, 1.0, 2.0, 2.0]) == [4.0, 1.0, 2.5, 2.5]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert spearman([1, 2, 3, 4], [40, 30, 20, 10]) == -1.0


def test_validate_runs_plans_and_baselines_and_reports_json(tmp_path, capsys):
    recipe = {"model": {"family": "mlp", "input_dim": 16, "widths": [32, 32], "classes": 4},
              "data": {"samples": 1000}, "training": {"global_batch": 16, "optimizer": "sgd", "precision": "fp32"},
              "cluster": {"preset": "cpu-local", "nodes": 1}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["validate", str(path), "--top", "1", "--steps", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"rows", "mape", "spearman", "regret"} <= set(out)
    sources = [r["source"] for r in out["rows"]]
    assert sources[0] == "plan 1" and "baseline" in sources and len(out["rows"]) >= 4
    for row in out["rows"]:
        assert row["measured_step_time_s"] and row["measured_step_time_s"] > 0, row
        assert row["predicted_step_time_s"] > 0 and row["measured_memory_bytes"] > 0
    assert out["regret"] >= 0 and 0 <= out["mape"] < 10
