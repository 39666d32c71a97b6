"""Exports (autopar/export): each format's file reads back to the strategy it was written for,
what a format cannot say is refused in one line, and `autopar export` / `plan --export`
write the file whole or not at all."""

import json
import math
import tomllib

import pytest
import yaml

from autopar.cli.main import main
from autopar.cost.model import CostModel
from autopar.errors import InputError
from autopar.export import Format, export, read_back
from autopar.spec.cluster import parse_cluster
from autopar.spec.recipe import parse_recipe
from autopar.spec.strategy import Strategy

GPT3 = {"family": "gpt", "layers": 96, "hidden": 12288, "heads": 96, "seq_len": 2048, "vocab": 51200}
LLAMA_MOE = {"family": "llama", "layers": 32, "hidden": 4096, "heads": 32, "kv_heads": 8, "seq_len": 32768, "vocab": 32000,
             "experts": 8, "top_k": 2}
DGX = parse_cluster({"preset": "dgx-a100-80gb", "nodes": 128})


def _recipe(model=GPT3, batch=1536):
    return parse_recipe({"model": model, "data": {"samples": 10**6}, "training": {"global_batch": batch, "optimizer": "adam",
                                                                                "precision": "bf16", "steps": 1000}})


def _laid_out(s: Strategy, recipe) -> Strategy:
    return CostModel.for_recipe(recipe, DGX).with_stages(s) if s.pp > 1 else s


CASES = {  # format: strategies it must carry (GPT-3 175B unless the model is named)
    Format.TORCHTITAN: ["dp=128,tp=8,zero=3,microbatch=6,recompute=selective,sequence_parallel=true",
                        "dp=16,tp=8,pp=8,zero=2,microbatch=1,schedule=interleaved,virtual_stages=2,recompute=full,sequence_parallel=true",
                        "dp=64,tp=8,pp=2,microbatch=2,schedule=zbv,virtual_stages=2,sequence_parallel=true",
                        "dp=768,zero=3,dp_shard=8,recompute=full", "dp=768,zero=3,offload=true,microbatch=1",
                        "moe:dp=128,tp=4,cp=2,ep=8,zero=3,microbatch=1,sequence_parallel=true"],
    Format.MEGATRON: ["dp=128,tp=8,zero=3,microbatch=6,recompute=selective,sequence_parallel=true",
                      "dp=16,tp=8,pp=8,zero=1,microbatch=1,schedule=interleaved,virtual_stages=2,recompute=full,sequence_parallel=true",
                      "dp=8,tp=8,pp=16,microbatch=1,recompute=full", "moe:dp=128,tp=4,cp=2,ep=8,microbatch=1,sequence_parallel=true"],
    Format.DEEPSPEED: ["dp=768,zero=3,microbatch=1,recompute=full", "dp=768,zero=3,offload=true,microbatch=1", "dp=512,zero=1"],
    Format.ACCELERATE: ["dp=768,zero=3,microbatch=1,recompute=full", "dp=768,zero=2", "dp=512,zero=3,offload=true",
                        "dp=128,tp=8,zero=3,microbatch=6,sequence_parallel=true", "moe-dense:dp=128,tp=4,cp=2,zero=3,microbatch=1"],
}


def _strategies(fmt):
    for text in CASES[fmt]:
        model, _, knobs = text.rpartition(":")
        dense = {k: v for k, v in LLAMA_MOE.items() if k not in ("experts", "top_k")}
        recipe = _recipe({"moe": LLAMA_MOE, "moe-dense": dense}.get(model, GPT3), 1024 if model.startswith("moe") else 1536)
        yield recipe, _laid_out(Strategy.parse(knobs), recipe)


@pytest.mark.parametrize("fmt", list(Format), ids=lambda f: f.value)
def test_each_export_reads_back_to_its_strategy(fmt):
    for recipe, s in _strategies(fmt):
        text = export(fmt, s, recipe, DGX)
        got = read_back(fmt, text, recipe.model.layers)
        G = recipe.training.global_batch
        for key, value in got.items():
            want = s.microbatch_size(G) if key == "microbatch" else getattr(s, key)
            assert value == want, (fmt.value, s.to_text(), key, value, want)
        assert len(got) >= 4, got


def test_the_files_parse_as_their_formats():
    recipe, s = next(_strategies(Format.TORCHTITAN))
    titan = tomllib.loads(export(Format.TORCHTITAN, s, recipe, DGX))
    assert titan["parallelism"]["data_parallel_shard_degree"] * titan["parallelism"]["tensor_parallel_degree"] == 1024
    assert titan["activation_checkpoint"]["mode"] == "selective"
    ds = json.loads(export(Format.DEEPSPEED, Strategy.parse("dp=512,zero=3,microbatch=1"), recipe, DGX))
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 512
    acc = yaml.safe_load(export(Format.ACCELERATE, Strategy.parse("dp=768,zero=3"), recipe, DGX))
    assert (acc["num_machines"], acc["num_processes"], acc["distributed_type"]) == (96, 768, "FSDP")


@pytest.mark.parametrize("fmt, text, needle", [
    (Format.DEEPSPEED, "dp=128,tp=8,zero=3", "model parallelism is in Megatron-DeepSpeed's code"),
    (Format.ACCELERATE, "dp=128,pp=8,microbatch=1", "no pipeline or expert parallelism"),
    (Format.ACCELERATE, "dp=128,tp=8,recompute=selective,sequence_parallel=true", "use zero=2 or 3"),
    (Format.MEGATRON, "dp=128,pp=8,microbatch=1,schedule=zbv,virtual_stages=2", "not zbv"),
    (Format.MEGATRON, "dp=768,zero=2", "whole gradient buffers"),
    (Format.TORCHTITAN, "dp=768,zero=1", "no ZeRO-1"),
    (Format.TORCHTITAN, "dp=128,tp=8", "sequence_parallel=true"),
])
def test_what_a_format_cannot_say_is_refused(fmt, text, needle):
    with pytest.raises(InputError, match=needle):
        export(fmt, Strategy.parse(text), _recipe(), DGX)


def test_megatron_takes_uniform_stages_or_a_different_first_and_last():
    recipe = _recipe()
    args = export(Format.MEGATRON, Strategy.parse("dp=16,tp=8,pp=8,microbatch=1,stages=11/12x6/13"), recipe, DGX)
    assert "--decoder-first-pipeline-num-layers 11" in args and "--decoder-last-pipeline-num-layers 13" in args
    with pytest.raises(InputError, match="neither"):
        export(Format.MEGATRON, Strategy.parse("dp=16,tp=8,pp=8,microbatch=1,stages=11/13/12x5/12"), recipe, DGX)


def test_export_command_writes_the_file_whole_or_not_at_all(tmp_path, capsys):
    recipe = tmp_path / "gpt3.yaml"
    recipe.write_text(yaml.safe_dump({"model": GPT3, "data": {"samples": 10**6},
                                      "training": {"global_batch": 1536, "optimizer": "adam", "precision": "bf16", "steps": 1000},
                                      "cluster": {"preset": "dgx-a100-80gb", "nodes": 128}}))
    out = tmp_path / "titan.toml"
    assert main(["export", str(recipe), "--to", "torchtitan", "--out", str(out)]) == 0
    par = tomllib.loads(out.read_text())["parallelism"]
    degrees = ("data_parallel_replicate_degree", "data_parallel_shard_degree", "tensor_parallel_degree", "pipeline_parallel_degree",
               "context_parallel_degree")
    assert math.prod(par[k] for k in degrees) <= 1024  # the plan's devices, at most the cluster's
    refused = tmp_path / "ds.json"
    assert main(["plan", str(recipe), "--export", "deepspeed", "--out", str(refused)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "deepspeed" in err
    assert not refused.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["gpt3.yaml", "titan.toml"]
    assert main(["export", str(recipe), "--to", "xml"]) == 2
    capsys.readouterr()
    # a --strategy the rules refuse (dp does not divide the batch) is not exported
    assert main(["export", str(recipe), "--to", "deepspeed", "--strategy", "dp=1024,zero=3,microbatch=1", "--out", str(refused)]) == 2
    assert "dp must divide the global batch" in capsys.readouterr().err and not refused.exists()


def test_a_saved_plan_exports_without_its_recipe_file(tmp_path, capsys):
    """autopar plan RECIPE --json > PLAN.json carries the recipe: export PLAN.json --to F
    writes plan N of it, the same text as exporting from the recipe."""
    recipe = tmp_path / "gpt3.yaml"
    recipe.write_text(yaml.safe_dump({"model": GPT3, "data": {"samples": 10**6},
                                      "training": {"global_batch": 1536, "optimizer": "adam", "precision": "bf16", "steps": 1000},
                                      "cluster": {"preset": "dgx-a100-80gb", "nodes": 128}}))
    assert main(["plan", str(recipe), "--json", "--top", "2"]) == 0
    saved = tmp_path / "plan.json"
    saved.write_text(capsys.readouterr().out)
    assert main(["export", str(saved), "--to", "torchtitan", "--plan", "2"]) == 0
    from_saved = capsys.readouterr().out
    second = json.loads(saved.read_text())["plans"][1]["strategy"]
    assert main(["export", str(recipe), "--to", "torchtitan", "--strategy", Strategy.from_dict(second).to_text()]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == from_saved.splitlines()[1:]  # the header names the cluster as saved
    assert main(["export", str(saved), "--to", "torchtitan", "--plan", "3"]) == 2
