"""Bad input: one line naming the field, the value and the fix; exit code 2; no traceback."""

import subprocess
import sys

import pytest
import yaml

from autopar.cli.main import main

GOOD = {
    "model": {"family": "gpt", "layers": 2, "hidden": 64, "heads": 4, "seq_len": 16, "vocab": 100},
    "data": {"samples": 100},
    "training": {"global_batch": 8},
    "cluster": {"preset": "cpu-local", "nodes": 1},
}


def _with(path: str, value):
    recipe = yaml.safe_load(yaml.safe_dump(GOOD))
    *parents, key = path.split(".")
    node = recipe
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[key]
    else:
        node[key] = value
    return recipe


_DELETE = object()

CASES = [
    ("unknown key", _with("model.hiddn", 64), "model.hiddn", "unknown key"),
    ("unknown top-level key", _with("trainng", {}), "trainng", "unknown key"),
    ("wrong type", _with("training.global_batch", "lots"), "training.global_batch", "valid integer"),
    ("zero size", _with("model.layers", 0), "model.layers", "greater than 0"),
    ("negative size", _with("data.samples", -5), "data.samples", "greater than 0"),
    ("heads not dividing hidden", _with("model.heads", 5), "model.heads", "must divide hidden (64)"),
    ("unknown family", _with("model.family", "bert"), "model.family", "expected one of"),
    ("unknown optimizer", _with("training.optimizer", "lion"), "training.optimizer", "adamw"),
    ("unknown cluster preset", _with("cluster.preset", "dgx-z100"), "cluster.preset", "unknown cluster preset"),
    ("unknown device preset", {**GOOD, "cluster": {"device": "tpu-v9", "devices_per_node": 4, "intra_node": {"bandwidth_GBps": 100}}},
     "cluster.device", "unknown device preset"),
    ("missing field", _with("training.global_batch", _DELETE), "training.global_batch", "required"),
    ("module that does not import",
     {**GOOD, "model": {"module": "no_such_pkg.models:build", "inputs": [{"shape": [4]}]}}, "model.module", "cannot import module"),
    ("factory that raises",
     {**GOOD, "model": {"module": "tests.fixtures.user_models:broken", "inputs": [{"shape": [4]}]}}, "model.kwargs", "out of cheese"),
    ("factory that returns no module",
     {**GOOD, "model": {"module": "tests.fixtures.user_models:not_a_module", "inputs": [{"shape": [4]}]}}, "model.module", "nn.Module"),
]


@pytest.mark.parametrize("name,recipe,field,hint", CASES, ids=[c[0] for c in CASES])
def test_bad_recipe_is_one_line_exit_2(tmp_path, capsys, name, recipe, field, hint):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code = main(["profile", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"autopar: error: {field}: got ")
    assert hint in err


def test_missing_file_and_invalid_yaml(tmp_path, capsys):
    assert main(["profile", str(tmp_path / "nope.yaml")]) == 2
    assert "recipe: got" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    assert main(["profile", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML at line" in err and err.count("\n") == 1


def test_console_script_exits_2_without_traceback(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_with("model.heads", 5)))
    proc = subprocess.run([sys.executable, "-m", "autopar.cli.main", "profile", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "model.heads: got 5" in proc.stderr and not proc.stdout
