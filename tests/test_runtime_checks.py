"""A strategy that cannot run exits 2 with the reason and its arithmetic, before any process starts.

The pure checks are tested directly; `autopar run` is called in-process with the
launcher replaced by a function that fails the test, so "exit 2" also proves that no
torchrun (and no worker) was started.
"""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from autopar import techniques
from autopar.cli.main import main
from autopar.plan.planner import plan
from autopar.profile.profiler import profile_recipe
from autopar.runtime import launch
from autopar.spec.cluster import parse_cluster
from autopar.spec.enums import Precision
from autopar.spec.recipe import parse_recipe
from autopar.spec.strategy import Strategy

GPT = {
    "model": {"family": "gpt", "layers": 4, "hidden": 32, "heads": 4, "seq_len": 16, "vocab": 64},
    "data": {"samples": 256},
    "training": {"global_batch": 8, "optimizer": "adam", "precision": "fp32", "steps": 2},
}
LLAMA = {**GPT, "model": {"family": "llama", "layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2, "seq_len": 16, "vocab": 64, "multiple_of": 16}}
MLP = {**GPT, "model": {"family": "mlp", "input_dim": 16, "widths": [32, 32], "classes": 4}}
CNN = {**GPT, "model": {"family": "cnn", "depth": 2, "width": 8, "image_size": 8, "classes": 4}}


def _facts(raw):
    return profile_recipe(parse_recipe(raw)).facts


def _problems(raw, text, nproc=None, nnodes=1, precision=Precision.FP32):
    s = Strategy.parse(text)
    nproc = nproc if nproc is not None else s.devices // nnodes
    return techniques.run_problems(s, _facts(raw), raw["training"]["global_batch"], precision, techniques.Launch(nproc, nnodes))


BAD = [
    ("devices", GPT, "dp=2,tp=4,pp=2", {"nproc": 8}, "dp(2) * tp(4) * pp(2) = 16 != nproc(8)"),
    ("devices over nodes", GPT, "dp=2,tp=2", {"nproc": 1, "nnodes": 2}, "dp(2) * tp(2) * pp(1) = 4 != nproc(1) * nnodes(2) = 2"),
    ("threads count as devices", MLP, "dp=2,threads=2", {"nproc": 2}, "dp(2) * tp(1) * pp(1) * threads(2) = 4 != nproc(2)"),
    ("batch over dp", GPT, "dp=3", {}, "global_batch(8) % dp(3) = 2; dp must divide the global batch"),
    ("batch over dp*microbatch", GPT, "dp=2,microbatch=3", {}, "global_batch(8) / dp(2) = 4 samples per replica, not a multiple of microbatch(3)"),
    ("microbatch too big", GPT, "dp=2,microbatch=8", {}, "microbatch(8) > per-replica batch global_batch(8) / dp(2) = 4"),
    ("tp not dividing heads", GPT, "tp=3", {}, "tp(3) must divide heads(4): 4 % 3 = 1"),
    ("tp not dividing kv heads", LLAMA, "tp=4", {}, "tp(4) must divide kv_heads(2): 2 % 4 = 2"),
    ("tp without a plan", CNN, "tp=2", {}, "model cnn has no tensor-parallel plan"),
    ("sequence parallel on an MLP", MLP, "tp=2,sequence_parallel=true", {}, "sequence_parallel needs a transformer"),
    ("sequence parallel without tp", GPT, "sequence_parallel=true", {}, "sequence_parallel needs tp > 1"),
    ("more stages than layers", GPT, "pp=4,virtual_stages=2,schedule=interleaved,microbatch=1", {}, "pp(4) * virtual_stages(2) = 8 stages > layers(4)"),
    ("stage layout", GPT, "pp=2,stages=3/2,schedule=gpipe", {}, "need pp(2) * virtual_stages(1) = 2 stages holding layers(4)"),
    ("1f1b with too few micro-batches", GPT, "pp=4,microbatch=4", {}, "schedule 1f1b needs num_microbatches(2) >= pp(4)"),
    ("virtual stages need interleaved", GPT, "pp=2,virtual_stages=2,schedule=1f1b,microbatch=1", {}, "virtual_stages(2) needs schedule=interleaved"),
    ("zbv is two chunks per rank", GPT, "pp=2,virtual_stages=1,schedule=zbv,microbatch=2", {}, "schedule=zbv runs exactly two chunks per rank"),
    ("zbv with zero=3", GPT, "pp=2,dp=2,zero=3,virtual_stages=2,schedule=zbv,microbatch=1", {}, "schedule=zbv with zero=3"),
    ("context parallel chunks", GPT, "cp=3", {"nproc": 3}, "cp(3) cuts seq_len(16) into 2 * cp = 6 equal chunks"),
    ("expert parallel without experts", GPT, "dp=2,ep=2", {}, "ep(2) > 1 needs mixture-of-experts layers"),
    ("interleaved rounds", {**GPT, "training": {"global_batch": 9}}, "pp=4,schedule=interleaved,microbatch=1", {},
     "num_microbatches(9) divisible by max(1, 9 // pp(4)) = 2"),
    ("async with tp", GPT, "dp=2,tp=2,sync=async", {}, "sync=async trains full replicas; it needs pp(1) and tp(1)"),
    ("async with pp", GPT, "dp=2,pp=2,sync=async,schedule=gpipe", {}, "got pp(2), tp(1)"),
    ("async alone", GPT, "sync=async", {}, "sync=async needs dp > 1 (local SGD) or threads > 1 (Hogwild)"),
    ("hogwild with dp", MLP, "dp=2,threads=2,sync=async", {}, "needs dp(1), got dp(2)"),
    ("hogwild with microbatch", MLP, "threads=2,sync=async,microbatch=2", {}, "each Hogwild worker takes global_batch / threads"),
    ("subnet with microbatch", MLP, "dp=2,subnet=true,microbatch=2", {}, "subnet=true trains each subnetwork on its whole share"),
    ("sync_every without async", GPT, "dp=2,sync_every=4", {}, "sync_every(4) applies to sync=async or subnet=true"),
    ("features without a feature layer", GPT, "dp=2,data_partition=features", {}, "needs a model with a feature layer"),
    ("features with tp", MLP, "dp=2,tp=2,data_partition=features", {}, "it needs tp(1), pp(1), zero(0), sync=sync"),
    ("subnet on a CNN", CNN, "dp=2,subnet=true", {}, "model cnn has none"),
    ("subnet with zero", MLP, "dp=2,zero=3,subnet=true", {}, "subnet=true needs dp > 1 with tp(1), pp(1), zero(0)"),
    ("selective recompute without attention", MLP, "dp=2,recompute=selective", {}, "model mlp has none (use full)"),
    ("fp16 with FSDP", GPT, "dp=2,zero=3", {"precision": Precision.FP16}, "precision fp16 needs loss scaling"),
]


@pytest.mark.parametrize("name,raw,text,kw,expected", BAD, ids=[c[0] for c in BAD])
def test_bad_strategy_names_the_arithmetic(name, raw, text, kw, expected):
    found = _problems(raw, text, **kw)
    assert found and expected in found[0], found


GOOD = [
    (GPT, "dp=2,tp=2,pp=2,zero=3,sequence_parallel=true,microbatch=2"),
    (GPT, "pp=2,virtual_stages=2,schedule=interleaved,microbatch=2,stages=1/1/1/1"),
    (LLAMA, "tp=2,recompute=selective"),
    (MLP, "dp=2,data_partition=features"),
    (MLP, "dp=2,subnet=true,sync_every=3"),
    (MLP, "threads=2,sync=async"),
    (MLP, "dp=2,sync=async,sync_every=4"),
    (CNN, "pp=2,schedule=gpipe,recompute=full"),
]


@pytest.mark.parametrize("raw,text", GOOD, ids=[g[1] for g in GOOD])
def test_good_strategy_has_no_problem(raw, text):
    assert _problems(raw, text) == []


# ------------------------------------------------------------------ the command line


@pytest.fixture
def no_launch(monkeypatch):
    """Fail the test if anything tries to start torchrun."""

    def refuse(*args, **kwargs):
        raise AssertionError("a process was started")

    monkeypatch.setattr(launch, "launch", refuse)


def _recipe(tmp_path, raw):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--strategy", "dp=2,tp=4,pp=2", "--nproc", "8"], "dp(2) * tp(4) * pp(2) = 16 != nproc(8)"),
        (["--strategy", "tp=3"], "tp(3) must divide heads(4)"),
        (["--strategy", "pp=8,schedule=gpipe"], "pp(8) * virtual_stages(1) = 8 stages > layers(4)"),
        (["--strategy", "dp=2,pp=2,sync=async,schedule=gpipe"], "sync=async trains full replicas"),
        (["--strategy", "dp=3"], "global_batch(8) % dp(3) = 2"),
        (["--strategy", "dp=2", "--nnodes", "2"], "--rdzv-endpoint"),
        (["--strategy", "dp=2", "--steps", "0"], "--steps"),
        (["--strategy", "dp=two"], "expected an integer"),
    ],
)
def test_run_exits_2_before_any_process(tmp_path, capsys, no_launch, args, expected):
    code = main(["run", _recipe(tmp_path, GPT), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err and err.count("\n") == 1, err


def test_a_strategy_needing_more_devices_than_the_cluster_has_is_refused(tmp_path, capsys, no_launch):
    """The recipe's cluster (cpu-local here: this machine's cores) bounds what run launches,
    unless --nproc oversubscribes on purpose."""
    raw = {**GPT, "cluster": {"preset": "cpu-local", "nodes": 1, "devices_per_node": 2}}
    assert main(["run", _recipe(tmp_path, raw), "--strategy", "dp=4", "--print-command"]) == 2
    err = capsys.readouterr().err
    assert "needs 4 devices; 1 node(s) of cluster" in err and "have 2" in err and err.count("\n") == 1
    assert main(["run", _recipe(tmp_path, raw), "--strategy", "dp=4", "--nproc", "4", "--print-command"]) == 0


def test_run_checks_the_loader_before_launch(tmp_path, capsys, no_launch):
    raw = {**MLP, "data": {"samples": 64, "loader": "no_such_pkg.data:load"}}
    assert main(["run", _recipe(tmp_path, raw), "--strategy", "dp=2"]) == 2
    assert "data.loader" in capsys.readouterr().err


def test_print_command_single_node(tmp_path, capsys, no_launch):
    path = _recipe(tmp_path, GPT)
    assert main(["run", path, "--strategy", "dp=2,tp=2,threads=2", "--steps", "5", "--print-command"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("OMP_NUM_THREADS=2 PYTHONSAFEPATH=1 AUTOPAR_USER_PATH=. torchrun --standalone --nproc-per-node 4 ")
    assert "-m autopar.cli.worker --recipe" in out and "--strategy dp=2,tp=2,threads=2 --steps 5" in out


def test_print_command_multi_node(tmp_path, capsys, no_launch, monkeypatch):
    monkeypatch.chdir(tmp_path)  # --nnodes 2 also writes autopar.sbatch here (it was written into the repository)
    path = _recipe(tmp_path, GPT)
    argv = ["run", path, "--strategy", "dp=2,tp=2", "--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", "10.0.0.1:29500", "--rdzv-id", "job7", "--print-command"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    expected = "--nnodes 2 --node-rank 1 --rdzv-backend c10d --rdzv-endpoint 10.0.0.1:29500 --rdzv-id job7 --nproc-per-node 2"
    assert expected in out and (tmp_path / "autopar.sbatch").exists()


def test_run_with_no_strategy_runs_plan_1_and_plans_for_the_nodes_asked(tmp_path, capsys, no_launch, monkeypatch):
    """No --strategy or --plan: plan 1. With --nnodes 2 the plan is made for two nodes and must
    split over them (one node's plan 1 here is threads=2, one process); --print-command then
    also writes a Slurm script that runs one torchrun per node."""
    monkeypatch.chdir(tmp_path)
    path = _recipe(tmp_path, GPT)
    assert main(["run", path, "--cluster", _cluster(tmp_path), "--print-command"]) == 0
    one = capsys.readouterr().out
    cluster = parse_cluster(yaml.safe_load(Path(_cluster(tmp_path)).read_text()))
    first = plan(parse_recipe(yaml.safe_load(Path(path).read_text())), cluster).plans[0].strategy
    assert f"--strategy {first.to_text()} " in one
    argv = ["run", path, "--plan", "1", "--nnodes", "2", "--rdzv-endpoint", "10.0.0.1:29500", "--print-command", "--slurm", "job.sbatch"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "--nnodes 2 " in out
    script = (tmp_path / "job.sbatch").read_text()
    assert "#SBATCH --nodes=2" in script and 'srun torchrun --nnodes 2' in script and '--rdzv-endpoint "$head:29500"' in script
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")]).returncode == 0


def test_plan_runs_the_planners_nth_plan(tmp_path, capsys, no_launch):
    """--plan N searches; --plan FILE[:N] replays a saved plan without searching (same strategy)."""
    path = _recipe(tmp_path, GPT)
    assert main(["plan", path, "--cluster", _cluster(tmp_path), "--json", "--top", "3"]) == 0
    saved = capsys.readouterr().out
    (tmp_path / "plan.json").write_text(saved)
    second = Strategy.from_dict(json.loads(saved)["plans"][1]["strategy"])
    for which in ("2", f"{tmp_path / 'plan.json'}:2"):
        assert main(["run", path, "--cluster", _cluster(tmp_path), "--plan", which, "--print-command"]) == 0
        assert f"--strategy {second.to_text()} " in capsys.readouterr().out
    assert main(["run", path, "--cluster", _cluster(tmp_path), "--plan", "9"]) == 2
    assert "expected a plan number 1 .. 5 (the planner found 5 plans)" in capsys.readouterr().err


def test_a_saved_plan_for_another_recipe_is_refused(tmp_path, capsys, no_launch):
    path = _recipe(tmp_path, GPT)
    assert main(["plan", path, "--cluster", _cluster(tmp_path), "--json"]) == 0
    (tmp_path / "plan.json").write_text(capsys.readouterr().out)
    (tmp_path / "other").mkdir()
    other = _recipe(tmp_path / "other", {**GPT, "training": {**GPT["training"], "global_batch": 16}})
    assert main(["run", other, "--plan", str(tmp_path / "plan.json")]) == 2
    assert "was planned for another recipe" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["run", path, "--plan", str(tmp_path / "bad.json")]) == 2
    assert "not a saved plan" in capsys.readouterr().err


def _cluster(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"preset": "cpu-local", "nodes": 1, "devices_per_node": 4}))
    return str(path)
