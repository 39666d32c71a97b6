"""Runtime pieces that need no process group: per-parameter initialisation, stage cutting,
tied weights, data rows, subnetwork partitions, recompute wrapping, tensor-parallel plans,
the torchrun command."""

import math

import pytest
import torch

from autopar.models import build_model
from autopar.models import init as model_init
from autopar.models.init import Dist, InitScheme, ParamInit, fill_, init_table, tied_parameters
from autopar.profile.facts import hidden_groups
from autopar.runtime.data import BatchSource
from autopar.runtime.launch import Rendezvous, WorkerArgs, torchrun_args
from autopar.runtime.names import clean_name
from autopar.runtime.train import with_stages
from autopar.spec.enums import Recompute, TPStyle
from autopar.spec.recipe import parse_recipe
from autopar.spec.strategy import Strategy
from autopar.techniques.features.apply import feature_slice
from autopar.techniques.pipeline import apply as pipeline
from autopar.techniques.recompute.apply import apply_activation_checkpointing
from autopar.techniques.subnet.apply import apply_subnet, draw_partition
from autopar.techniques.tensor.apply import resolve_plan

TRAINING = {"global_batch": 8, "optimizer": "adam", "precision": "fp32"}
GPT = parse_recipe({"model": {"family": "gpt", "layers": 5, "hidden": 32, "heads": 4, "seq_len": 8, "vocab": 64}, "data": {"samples": 20}, "training": TRAINING})
LLAMA = parse_recipe({"model": {"family": "llama", "layers": 2, "hidden": 32, "heads": 4, "seq_len": 8, "vocab": 64, "multiple_of": 16}, "data": {"samples": 20}, "training": TRAINING})
CNN = parse_recipe({"model": {"family": "cnn", "depth": 3, "width": 8, "image_size": 8, "classes": 4}, "data": {"samples": 20}, "training": TRAINING})
MLP = parse_recipe({"model": {"family": "mlp", "input_dim": 12, "widths": [16, 8], "classes": 3}, "data": {"samples": 20}, "training": TRAINING})
CPU = torch.device("cpu")


def _model_and_batch(recipe):
    mdef = build_model(recipe.model, CPU, torch.float64, seed=0)
    return mdef, BatchSource(mdef, recipe, CPU, torch.float64).rows(0, 0, 4)


@pytest.mark.parametrize("shape", [(10, 6), (11,), (6, 3, 2, 2)])
def test_any_box_of_a_parameter_equals_that_box_of_the_whole(monkeypatch, shape):
    """A rank's shard (rows, columns, or both) is drawn alone and equals the single-process values."""
    monkeypatch.setattr(model_init, "BLOCK_ELEMENTS", 7)  # several blocks, some of one row
    init = ParamInit(Dist.NORMAL, 0.02, shape, "layers.0.fc.weight")
    whole = fill_(torch.empty(shape, dtype=torch.float64), init, seed=3)
    assert torch.equal(whole, fill_(torch.empty(shape), init, seed=3).double())  # drawn in float32, cast
    boxes = [((0,) * len(shape), shape), ((2,) + (0,) * (len(shape) - 1), (3, *shape[1:]))]
    if len(shape) > 1:
        boxes += [((0, 2) + (0,) * (len(shape) - 2), (shape[0], 1, *shape[2:])), ((1, 1) + (0,) * (len(shape) - 2), (5, 2, *shape[2:]))]
    for start, size in boxes:
        box = fill_(torch.empty(size, dtype=torch.float64), init, seed=3, offset=start)
        expected = whole[tuple(slice(a, a + n) for a, n in zip(start, size))]
        assert torch.equal(box, expected), (start, size)
    other = fill_(torch.empty(shape), ParamInit(Dist.NORMAL, 0.02, shape, "layers.1.fc.weight"), seed=3)
    assert not torch.equal(other.double(), whole)  # each name its own stream
    assert not torch.equal(fill_(torch.empty(shape, dtype=torch.float64), init, seed=4), whole)
    with pytest.raises(ValueError, match="outside"):
        fill_(torch.empty(2, *shape[1:]), init, seed=3, offset=(shape[0] - 1,) + (0,) * (len(shape) - 1))


def test_initial_values_follow_each_family_distribution():
    gpt = build_model(GPT.model, CPU, torch.float64, seed=0).module
    assert gpt.head.out.weight is gpt.embed.tok.weight  # tied after materialisation
    fc1 = gpt.layers[0].mlp.fc1
    assert abs(fc1.weight.std().item() - 0.02) < 0.002 and not fc1.bias.any() and bool((gpt.layers[0].ln1.weight == 1).all())
    assert torch.equal(gpt.layers[0].attn.core.mask, torch.ones(8, 8, dtype=torch.bool).triu(1))
    mlp = build_model(MLP.model, CPU, torch.float64, seed=0).module
    w, b = mlp.layers[0].fc.weight, mlp.layers[0].fc.bias  # kaiming_uniform(a=sqrt(5)): U(-1/sqrt(12), 1/sqrt(12))
    assert w.abs().max() <= 1 / math.sqrt(12) and b.abs().max() <= 1 / math.sqrt(12)
    assert abs(w.std().item() - 1 / math.sqrt(12) / math.sqrt(3)) < 0.03
    table = init_table(build_model(CNN.model, "meta").module, InitScheme.TORCH_DEFAULT)
    assert table["stem.conv.weight"].scale == 1 / math.sqrt(3 * 3 * 3) and table["stem.norm.weight"].dist is Dist.ONES


def test_meta_build_draws_nothing(monkeypatch):
    def refuse(*args):
        raise AssertionError("a meta build drew weights")

    monkeypatch.setattr(model_init, "_draw", refuse)
    for recipe in (GPT, LLAMA, CNN, MLP):
        assert all(p.is_meta for p in build_model(recipe.model, "meta").module.parameters())


def test_layer_ranges_are_given_never_invented():
    """The runtime has no layout of its own: the cost model's (with_stages) or the user's."""
    assert pipeline.layer_ranges(5, 2, (1, 4)) == [range(0, 1), range(1, 5)]
    for bad in (None, (2, 2), (1, 1, 3)):
        with pytest.raises(ValueError, match="pipeline needs stages="):
            pipeline.layer_ranges(5, 2, bad)


@pytest.mark.parametrize("recipe,text", [(GPT, "pp=2,stages=2/3"), (CNN, "pp=3"), (MLP, "pp=3"), (GPT, "pp=2,virtual_stages=2,schedule=interleaved")])
def test_stage_chunks_chained_equal_the_model(recipe, text):
    s = with_stages(recipe, Strategy.parse(text), None)
    mdef, (inputs, _) = _model_and_batch(recipe)
    expected = mdef.module(*inputs)
    chunks = sorted((c for r in range(s.pp) for c in pipeline.apply_pipeline_split(mdef.module, s, r)), key=lambda c: c.stage)
    assert [c.stage for c in chunks] == list(range(s.pp * s.virtual_stages))
    x = inputs[0]
    for chunk in chunks:
        x = chunk.module(x)
    torch.testing.assert_close(x, expected, rtol=0, atol=0)
    names = [n for c in chunks for n, _ in c.module.named_parameters()]
    assert set(names) == {n for n, _ in mdef.module.named_parameters(remove_duplicate=False)}


def test_tied_weights_across_stages():
    gpt = build_model(GPT.model, "meta").module
    ties = pipeline.cross_stage_ties(gpt, Strategy.parse("pp=2,stages=2/3"))
    assert [(t.names, t.stages) for t in ties] == [(("embed.tok.weight", "head.out.weight"), (0, 1))]
    assert tied_parameters(gpt) == [["embed.tok.weight", "head.out.weight"]]
    assert pipeline.cross_stage_ties(build_model(LLAMA.model, "meta").module, Strategy.parse("pp=2,stages=1/1")) == []


def test_tp_plan_resolves_to_every_matching_module():
    styles = resolve_plan(build_model(LLAMA.model, "meta").module, build_model(LLAMA.model, "meta").tp_plan)
    assert styles["layers.1.attn.wk"] is TPStyle.COLWISE and styles["layers.0.mlp.w2"] is TPStyle.ROWWISE
    assert styles["embed.tok"] is TPStyle.VOCAB_EMBEDDING and styles["head.out"] is TPStyle.VOCAB_HEAD
    assert len(styles) == 2 * 7 + 2


def test_replica_rows_partition_the_global_batch():
    mdef = build_model(GPT.model, CPU, torch.float64, seed=0)
    source = BatchSource(mdef, GPT, CPU, torch.float64)
    (whole,), target = source.rows(3, 0, 8)
    parts = [source.replica_rows(3, r, 4) for r in range(4)]
    torch.testing.assert_close(torch.cat([p[0][0] for p in parts]), whole)
    torch.testing.assert_close(torch.cat([p[1] for p in parts]), target)
    assert not torch.equal(source.rows(4, 0, 8)[0][0], whole)  # each step its own batch


def test_loader_gets_the_sample_ids_of_its_rows():
    raw = {"model": {"family": "mlp", "input_dim": 16, "widths": [8], "classes": 4}, "training": TRAINING,
           "data": {"samples": 20, "loader": "tests.runtime_helpers.loaders:teacher_classes"}}
    recipe = parse_recipe(raw)
    source = BatchSource(build_model(recipe.model, "meta"), recipe, CPU, torch.float64)
    from tests.runtime_helpers.loaders import teacher_classes

    (x,), y = source.rows(2, 4, 8)  # step 2 holds samples 16..23 mod 20 -> rows 4..7 are 0..3
    x_ref, y_ref = teacher_classes(torch.tensor([0, 1, 2, 3]))
    torch.testing.assert_close(x, x_ref.double())
    assert torch.equal(y, y_ref)


def test_feature_slices_cover_the_columns():
    parts = [feature_slice(10, r, 4) for r in range(4)]
    assert [(p.lo, p.hi) for p in parts] == [(0, 3), (3, 6), (6, 8), (8, 10)]


def test_subnet_partitions_are_disjoint_and_cover_each_hidden_layer():
    model = build_model(MLP.model, CPU, torch.float64, seed=0).module
    groups = hidden_groups(model)
    assert [(g.producers, g.consumers, g.width) for g in groups] == [(("layers.0.fc",), ("layers.1.fc",), 16), (("layers.1.fc",), ("layers.2.fc",), 8)]
    parts = [draw_partition(groups, r, 3, seed=7, device=CPU) for r in range(3)]
    for name, width in (("layers.0.fc", 16), ("layers.1.fc", 8)):
        units = torch.cat([p.rows[name] for p in parts])
        assert sorted(units.tolist()) == list(range(width))
    sub = apply_subnet(model, parts[1], scale=3.0)
    rows, cols = parts[1].rows["layers.1.fc"], parts[1].cols["layers.1.fc"]
    torch.testing.assert_close(sub.layers[1].fc.weight, model.layers[1].fc.weight[rows][:, cols])
    assert sub.layers[2].fc.weight.shape == (3, len(parts[1].cols["layers.2.fc"]))
    assert len(hidden_groups(build_model(LLAMA.model, "meta").module)) == 2


@pytest.mark.parametrize("mode,wrapped", [(Recompute.FULL, 5), (Recompute.SELECTIVE, 5), (Recompute.NONE, 0)])
def test_recompute_wraps_and_keeps_the_math(mode, wrapped):
    mdef, (inputs, target) = _model_and_batch(GPT)
    expected_loss = mdef.loss(mdef.module(*inputs), target)
    expected_loss.backward()
    expected = {n: p.grad.clone() for n, p in mdef.module.named_parameters()}
    mdef.module.zero_grad()
    assert apply_activation_checkpointing(mdef.module, mode) == wrapped
    loss = mdef.loss(mdef.module(*inputs), target)
    loss.backward()
    torch.testing.assert_close(loss, expected_loss, rtol=0, atol=0)
    for name, p in mdef.module.named_parameters():
        torch.testing.assert_close(p.grad, expected[clean_name(name)], rtol=0, atol=1e-15)


def test_clean_name_only_strips_wrappers():
    assert clean_name("module.layers.0._checkpoint_wrapped_module.attn.q.weight") == "layers.0.attn.q.weight"
    assert clean_name("submodule.x.weight") == "submodule.x.weight"


def test_torchrun_args_put_processes_not_threads_per_node():
    worker = WorkerArgs("r.yaml", Strategy.parse("dp=4,tp=2,threads=2"), steps=3)
    args = torchrun_args(worker.strategy, Rendezvous(nnodes=2, endpoint="h:1"), worker)
    assert args[args.index("--nproc-per-node") + 1] == "4"
    assert args[args.index("-m") + 1] == "autopar.cli.worker"
