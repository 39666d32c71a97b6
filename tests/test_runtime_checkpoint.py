"""Distributed checkpoints: save, resume, reshard (multi-process, slow: ~45 s).

One 2-rank torchrun of tests/runtime_helpers/resume.py trains each pair's first strategy for
2 steps with a checkpoint, resumes to 4 steps under the second, and compares the whole run
with single-process training, all in float64: "equal" means within TOL (the resumed values
are the saved bits, and float64 strategies agree to ~1e-13). Pairs of one strategy are also
compared with the same strategy trained uninterrupted. Then `autopar run` end to end: one
process resumes a checkpoint pp=2 wrote, saving every step; and bad input exits 2 before
anything is written.

AUTOPAR_CHECKPOINT_MESHES=1 adds a 4-rank launch resharding between 2-D meshes (~45 s).
"""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
import yaml

from autopar.cli.main import main
from autopar.errors import InputError, RunStopped
from autopar.models import build_model
from autopar.runtime import checkpoint
from autopar.spec.recipe import parse_recipe
from autopar.spec.strategy import Strategy

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
TOL = 1e-9

GPT = {"family": "gpt", "layers": 4, "hidden": 32, "heads": 4, "seq_len": 16, "vocab": 64}  # tied embedding/head
MOE = {"family": "llama", "layers": 4, "hidden": 32, "heads": 4, "kv_heads": 2, "seq_len": 16, "vocab": 64, "multiple_of": 16,
       "experts": 4, "top_k": 2, "ffn_hidden": 24}
WIDE = {"family": "wide_linear", "input_dim": 15, "hidden": 8, "classes": 3}  # features split 8 + 7


def _recipe(model, optimizer="adam", lr=0.01) -> dict:
    return {"model": model, "data": {"samples": 256}, "training": {"global_batch": 8, "precision": "fp32", "optimizer": optimizer, "lr": lr}}


def _case(name, model, pairs, **training):
    return {"name": name, "recipe": _recipe(model, **training), "steps": 4, "save_at": 2, "pairs": pairs}


PP_1F1B = "pp=2,schedule=1f1b,microbatch=2"
PP_INTERLEAVED = "pp=2,schedule=interleaved,virtual_stages=2,microbatch=2"
TO_PIPELINE = "tp=2->pp=2,schedule=gpipe,microbatch=2"  # its checkpoint is then resumed by `autopar run` in one process
SAME = [  # (a) resume under the strategy that saved
    _case("gpt", GPT, [[s, s] for s in ("dp=2,zero=3", "tp=2,sequence_parallel=true", PP_INTERLEAVED)]),
    _case("wide", WIDE, [["dp=2,data_partition=features"] * 2], optimizer="adamw"),
]
RESHARD = [  # (b) resume under another layout
    _case("gpt", GPT, [
        ["dp=2,zero=3", "tp=2"], [PP_1F1B, "dp=2"],
        TO_PIPELINE.split("->"),  # the last stage's tied head is saved (and found) as embed.tok.weight
        ["dp=2,zero=1", "dp=2,zero=2"],
    ]),
    _case("wide", WIDE, [["dp=2,data_partition=features", "dp=2,zero=3"], ["dp=2", "dp=2,data_partition=features"]], optimizer="adamw"),
    # expert-parallel stacks (each rank holds half the experts) are saved whole and cut back on load
    _case("moe", MOE, [["dp=2,ep=2", "dp=2,zero=3"], ["dp=2", "dp=2,ep=2,zero=3"]]),
]
MESHES = [
    _case("gpt", GPT, [
        ["pp=2,dp=2,zero=3,schedule=1f1b,microbatch=2", "dp=2,tp=2"],
        ["dp=2,tp=2,zero=3", "pp=2,tp=2,sequence_parallel=true,schedule=1f1b,microbatch=4"],
        ["dp=4,zero=3", "pp=2,dp=2,zero=1,schedule=interleaved,virtual_stages=2,microbatch=2"],
    ]),
]


def _launch(tmp_path_factory, nproc: int, cases: list) -> dict:
    work = tmp_path_factory.mktemp(f"resume{nproc}")
    cases_path, out_path = work / "cases.json", work / "out.json"
    cases_path.write_text(json.dumps(cases))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "tests.runtime_helpers.resume", str(cases_path), str(out_path), str(work / "checkpoints")]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    if not out_path.exists():
        pytest.fail(f"torchrun exited {proc.returncode} without results:\n{proc.stderr[-4000:]}")
    return {(r["case"], "->".join(r["pair"])): r for r in json.loads(out_path.read_text())}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return _launch(tmp_path_factory, 2, SAME + RESHARD)


def _keys(cases):
    return [(c["name"], "->".join(p)) for c in cases for p in c["pairs"]]


def _check_resumed(results, key) -> dict:
    r = results.get(key)
    assert r is not None, f"{key} did not run (an earlier pair failed?)"
    assert "error" not in r, r["error"]
    assert r["first_step"] == 2 and not r["missing"], (r["first_step"], r["missing"])
    assert r["loss_diff"] < TOL, (r["losses"], r["reference_losses"])
    assert r["param_diff"] < TOL, r["param_diff"]
    return r


@pytest.mark.parametrize("key", _keys(SAME), ids="/".join)
def test_resume_equals_uninterrupted_training(two_ranks, key):
    r = _check_resumed(two_ranks, key)
    assert r["uninterrupted_loss_diff"] < TOL and r["uninterrupted_param_diff"] < TOL, r


@pytest.mark.parametrize("key", _keys(RESHARD), ids="/".join)
def test_resume_under_another_strategy(two_ranks, key):
    _check_resumed(two_ranks, key)


@pytest.mark.skipif(os.environ.get("AUTOPAR_CHECKPOINT_MESHES") != "1", reason="4 ranks on this machine: ~45 s; set AUTOPAR_CHECKPOINT_MESHES=1")
def test_resume_between_2d_meshes(tmp_path_factory):
    results = _launch(tmp_path_factory, 4, MESHES)
    for key in _keys(MESHES):
        _check_resumed(results, key)


# ------------------------------------------------------------------ `autopar run` end to end


def _autopar(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autopar.cli.main", *args], env=ENV, capture_output=True, text=True, timeout=300)


def _write(path: Path, raw: dict) -> str:
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.fixture(scope="module")
def one_process(two_ranks, tmp_path_factory):
    """`autopar run` in one process resumes the checkpoint pp=2 wrote at step 4 (pair TO_PIPELINE)
    and trains to step 6, saving every step."""
    work = tmp_path_factory.mktemp("cli")
    recipe, ckpt = _write(work / "gpt.yaml", _recipe(GPT)), Path(two_ranks[("gpt", TO_PIPELINE)]["checkpoint"])
    resumed = _autopar("run", recipe, "--strategy", "single", "--steps", "6", "--save-every", "1", "--checkpoint", str(ckpt), "--json", "--dtype", "float64")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return work, ckpt, json.loads(resumed.stdout), resumed.stderr


def test_cli_resumes_a_pipeline_checkpoint_in_one_process(one_process):
    from tests.runtime_helpers.equivalence import reference

    _, ckpt, resumed, stderr = one_process
    assert sorted(p.name for p in ckpt.iterdir()) == [checkpoint.MARKER_FILE, "step-2", "step-4", "step-5", "step-6"]
    # the strategy that wrote it, with the stage layout the run executed (the cost model's)
    assert json.loads((ckpt / "step-4" / "autopar.json").read_text())["strategy"] == "pp=2,microbatch=2,schedule=gpipe,stages=2/2"
    assert f"resuming from {ckpt / 'step-4'} (step 4 of 6)" in stderr
    assert resumed["first_step"] == 4 and any(a.startswith("checkpoint(") for a in resumed["applied"])
    ref_losses, ref_params, owned = reference(parse_recipe(_recipe(GPT)), 6)
    for got, want in zip(resumed["losses"], ref_losses[4:], strict=True):
        assert abs(got - want) < TOL
    # the last checkpoint is plain DCP under the model's own names: any program can load it
    model = build_model(parse_recipe(_recipe(GPT)).model, "cpu", torch.float64).module
    state = {"model": dict(model.named_parameters())}
    dcp.load(state, checkpoint_id=str(ckpt / "step-6"))
    assert set(state["model"]) == owned
    assert max((p - ref_params[n]).abs().max().item() for n, p in state["model"].items()) < TOL


def _rejected(capsys, *argv: str, hint: str) -> None:
    code = main(["run", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("autopar: error:") and hint in err, err


def test_checkpoint_at_a_file_is_rejected(tmp_path, capsys):
    recipe, target = _write(tmp_path / "gpt.yaml", _recipe(GPT)), tmp_path / "notes.txt"
    target.write_text("keep me")
    _rejected(capsys, recipe, "--strategy", "dp=2", "--steps", "2", "--checkpoint", str(target), hint="is a file")
    assert target.read_text() == "keep me"


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("change,hint", [
    ({"model": {**GPT, "hidden": 48}}, "holds another model: embed.tok.weight has shape (64, 32) there, (64, 48) here"),
    ({"model": {**GPT, "layers": 5}}, "holds another model: it has no layers.4."),
    ({"training": {**_recipe(GPT)["training"], "optimizer": "sgd"}}, "was trained with optimizer adam, this recipe uses sgd"),
], ids=["other shapes", "more layers", "other optimizer"])
def test_checkpoint_of_another_run_is_rejected(one_process, tmp_path, capsys, change, hint):
    _, ckpt, *_ = one_process
    before = _listing(ckpt)
    recipe = _write(tmp_path / "other.yaml", {**_recipe(GPT), **change})
    _rejected(capsys, recipe, "--strategy", "dp=2", "--steps", "8", "--checkpoint", str(ckpt), hint=hint)
    assert _listing(ckpt) == before


@pytest.mark.parametrize("argv,hint", [
    (["--strategy", "dp=2", "--steps", "6"], "already at step 6"),
    (["--strategy", "dp=2,sync=async,sync_every=2", "--steps", "8"], "local SGD replicas hold different parameters"),
    (["--strategy", "dp=2,subnet=true", "--steps", "8"], "IST redraws"),
    (["--strategy", "threads=2,sync=async", "--steps", "8"], "Hogwild"),
    (["--strategy", "dp=2", "--steps", "8", "--save-every", "0"], "--save-every: got 0"),
], ids=["nothing left to train", "local SGD", "IST", "Hogwild", "save every 0"])
def test_checkpoint_that_cannot_resume_is_rejected(one_process, capsys, argv, hint):
    work, ckpt, *_ = one_process
    before = _listing(ckpt)
    _rejected(capsys, str(work / "gpt.yaml"), *argv, "--checkpoint", str(ckpt), hint=hint)
    assert _listing(ckpt) == before


def test_save_every_needs_a_checkpoint(tmp_path, capsys):
    recipe = _write(tmp_path / "gpt.yaml", _recipe(GPT))
    _rejected(capsys, recipe, "--strategy", "dp=2", "--steps", "2", "--save-every", "1", hint="needs --checkpoint DIR")


def test_a_changed_recipe_is_named_before_resuming(one_process):
    from autopar.runtime.checkpoint import changes_note, latest_step, read_meta, step_dir

    _, ckpt, *_ = one_process
    saved = read_meta(step_dir(ckpt, latest_step(ckpt)))
    assert changes_note(saved, parse_recipe(_recipe(GPT))) is None
    changed = parse_recipe({**_recipe(GPT, lr=0.02), "data": {"samples": 128}})
    assert changes_note(saved, changed) == "the recipe changed since the checkpoint (samples 256 -> 128, lr 0.01 -> 0.02)"


def test_damaged_checkpoints_fall_back_and_old_ones_are_retired(tmp_path):
    """64 flipped bytes in a shard resumed with exit 0 and trained on NaN: now every file's
    SHA-256 is in autopar.json, the damaged step is named and the newest intact one resumes;
    --keep K keeps the newest K steps."""
    recipe, ckpt = _write(tmp_path / "gpt.yaml", _recipe(GPT)), tmp_path / "ckpt"
    first = _autopar("run", recipe, "--strategy", "dp=2", "--steps", "4", "--save-every", "1", "--keep", "2",
                     "--checkpoint", str(ckpt), "--json", "--dtype", "float64")
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(p.name for p in ckpt.iterdir()) == [checkpoint.MARKER_FILE, "step-3", "step-4"]
    shard = max((f for f in (ckpt / "step-4").iterdir() if f.suffix == ".distcp"), key=lambda f: f.stat().st_size)
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(b ^ 0xFF for b in raw[len(raw) // 2: len(raw) // 2 + 64])
    shard.write_bytes(bytes(raw))
    resumed = _autopar("run", recipe, "--strategy", "dp=2", "--steps", "5", "--checkpoint", str(ckpt), "--json", "--dtype", "float64")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step-4 is damaged" in resumed.stderr and "resuming from step 3" in resumed.stderr, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["first_step"] == 3 and all(math.isfinite(x) for x in report["losses"])


def test_two_runs_cannot_share_a_checkpoint_directory(tmp_path, capsys):
    from autopar.runtime.checkpoint import hold_lock

    recipe, ckpt = _write(tmp_path / "gpt.yaml", _recipe(GPT)), tmp_path / "ckpt"
    with hold_lock(ckpt):  # this process holds it, as a running `autopar run` would
        _rejected(capsys, recipe, "--strategy", "dp=2", "--steps", "2", "--checkpoint", str(ckpt), hint="in use by another run")
    (ckpt / ".lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))  # its process is gone
    with hold_lock(ckpt):
        assert json.loads((ckpt / ".lock").read_text())["pid"] == os.getpid()
    assert not (ckpt / ".lock").exists()


def test_a_directory_autopar_did_not_create_is_resumed_only_when_trusted(tmp_path, capsys):
    """DCP's .metadata is a pickle: a directory without autopar's marker is refused (nothing
    written), and adopted with --trust-checkpoint."""
    recipe, ckpt = _write(tmp_path / "gpt.yaml", _recipe(GPT)), tmp_path / "downloaded"
    (ckpt / "step-2").mkdir(parents=True)
    (ckpt / "step-2" / ".metadata").write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")  # a pickle that would run a command
    before = _listing(ckpt)
    _rejected(capsys, recipe, "--strategy", "dp=2", "--steps", "4", "--checkpoint", str(ckpt), hint="was not created by autopar")
    assert _listing(ckpt) == before
    assert main(["run", recipe, "--strategy", "dp=2", "--steps", "4", "--checkpoint", str(ckpt), "--trust-checkpoint", "--print-command"]) == 0
    assert (ckpt / checkpoint.MARKER_FILE).is_file()


def test_a_directory_that_cannot_be_created_is_refused_before_training(tmp_path, capsys):
    recipe, blocker = _write(tmp_path / "gpt.yaml", _recipe(GPT)), tmp_path / "a-file"
    blocker.write_text("")
    _rejected(capsys, recipe, "--strategy", "dp=2", "--steps", "2", "--checkpoint", str(blocker / "ckpt"), hint="cannot be written")


def test_too_little_free_space_is_found_before_training(tmp_path, monkeypatch):
    recipe = parse_recipe(_recipe(GPT))
    need = checkpoint.checkpoint_bytes(recipe)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: type("Usage", (), {"free": int(need) - 1})())
    with pytest.raises(InputError, match="GB free; one checkpoint of this run takes about"):
        checkpoint.check(str(tmp_path / "ckpt"), recipe, Strategy(dp=2), 4, None)


class _FullDisk:
    scaler = None

    def save(self, where):
        raise OSError(28, "No space left on device")


def _saver(tmp_path) -> checkpoint.Checkpointer:
    saver = object.__new__(checkpoint.Checkpointer)  # its parts, without a trainer
    saver.options, saver.strategy, saver.state, saver.facts = checkpoint.CheckpointOptions(str(tmp_path)), Strategy(), _FullDisk(), {}
    return saver


def test_a_save_on_a_full_disk_stops_in_one_line_and_leaves_the_step_incomplete(tmp_path):
    with pytest.raises(RunStopped, match=r"saving .*step-3 failed \(No space left on device\); it has no autopar.json"):
        _saver(tmp_path).save(3)
    assert checkpoint.latest_step(tmp_path) is None


def test_a_non_finite_loss_stops_before_its_state_is_saved(tmp_path):
    saver = _saver(tmp_path)
    saver.guard_finite(torch.tensor(2.5), 1)
    with pytest.raises(RunStopped, match="step 2: the loss is not finite"):
        saver.guard_finite(torch.tensor(float("nan")), 2)


def test_a_diverging_run_stops_with_its_last_finite_checkpoint_intact(tmp_path):
    """lr 1e30 turns the loss NaN at step 2: every rank stops (exit 1, one line, no traceback)
    and step 1 is the newest checkpoint, intact."""
    recipe = _write(tmp_path / "mlp.yaml", {"model": {"family": "mlp", "input_dim": 16, "widths": [32], "classes": 4},
                                            "data": {"samples": 256}, "training": {"global_batch": 8, "optimizer": "sgd", "lr": 1e30,
                                                                                   "precision": "fp32"}})
    ckpt = tmp_path / "ckpt"
    proc = subprocess.run([sys.executable, "-m", "autopar.cli.main", "run", recipe, "--strategy", "dp=2", "--steps", "6",
                           "--checkpoint", str(ckpt), "--save-every", "1"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "autopar: stopped: step 2: the loss is not finite" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert checkpoint.latest_step(ckpt, verify=True) == 1
