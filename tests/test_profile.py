"""The profiler against closed-form counts from the papers, and on a user module."""

import pytest

from autopar.profile.profiler import profile_model
from autopar.spec.enums import Precision
from autopar.spec.recipe import parse_recipe


def _model(**kw):
    return parse_recipe({"model": kw, "data": {"samples": 8}, "training": {"global_batch": 8}}).model


def _megatron_table1():
    from autopar.validation.published import load_runs

    runs = load_runs()
    return [r["model"] for r in runs if r["id"].startswith("megatron2021_t1_")]


@pytest.mark.parametrize("m", _megatron_table1(), ids=lambda m: f"{m['params_b']}B")
def test_gpt_params_match_megatron_eq2(m):
    """Megatron-LM SC'21 Eq. 2: P = 12 L h^2 (1 + 13/(12h) + (V+s)/(12 L h))."""
    L, h, s, V = m["layers"], m["hidden"], m["seq_len"], m["vocab"]
    expected = 12 * L * h**2 * (1 + 13 / (12 * h) + (V + s) / (12 * L * h))
    prof = profile_model(_model(family="gpt", layers=L, hidden=h, heads=m["heads"], seq_len=s, vocab=V))
    assert prof.params == pytest.approx(expected, rel=0.005)
    assert prof.params == pytest.approx(m["params_b"] * 1e9, rel=0.03)  # the table rounds (1.65 B -> "1.7")


def test_gpt_layer_forward_flops_and_korthikanti_activations():
    """One layer: forward FLOPs 24 B s h^2 + 4 B s^2 h; saved activations
    s b h (34 + 5 a s / h) bytes in 16-bit (Korthikanti et al. 2022, Eq. 1), of which
    s b h (24 + 5 a s / h) sit inside tensor-parallel regions (Eq. 2), and selective
    recompute frees the 5 a s^2 b of the attention core."""
    s, h, a = 256, 512, 8
    prof = profile_model(_model(family="gpt", layers=2, hidden=h, heads=a, seq_len=s, vocab=1000, dropout=0.1), Precision.BF16)
    block = prof.layers[1].stats
    assert block.forward_flops == pytest.approx(24 * s * h**2 + 4 * s**2 * h, rel=0.02)
    assert block.backward_flops == pytest.approx(2 * block.forward_flops, rel=0.02)
    assert block.saved_bytes == pytest.approx(s * h * (34 + 5 * a * s / h), rel=0.01)
    assert block.saved_tp_bytes == pytest.approx(s * h * (24 + 5 * a * s / h), rel=0.01)
    assert block.saved_core_bytes == pytest.approx(5 * a * s * s, rel=0.01)
    # Megatron: two all-reduces of s*b*h forward (after attention and MLP), two backward
    assert (block.tp_fwd_allreduces, block.tp_bwd_allreduces) == (2, 2)
    assert block.tp_fwd_allreduce_bytes == pytest.approx(2 * 2 * s * h)
    assert block.tp_bwd_allreduce_bytes == pytest.approx(2 * 2 * s * h)


def test_identical_blocks_profiled_once():
    prof = profile_model(_model(family="gpt", layers=6, hidden=64, heads=4, seq_len=16, vocab=100))
    names = [lp.name for lp in prof.layers]
    assert names == ["embed"] + [f"layers.{i}" for i in range(6)] + ["head"]
    blocks = {id(lp.stats) for lp in prof.layers[1:-1]}
    assert len(blocks) == 1 and len(prof.groups()) == 3


def test_llama_grouped_query_attention_params():
    L, h, a, kv, V = 3, 256, 8, 2, 1000
    spec = _model(family="llama", layers=L, hidden=h, heads=a, kv_heads=kv, seq_len=32, vocab=V)
    hd, ffn = h // a, spec.ffn
    assert ffn == 768  # int(2 * 4h / 3) = 682 rounded up to a multiple of 256
    per_layer = h * a * hd + 2 * h * kv * hd + a * hd * h + 3 * h * ffn + 2 * h
    expected = L * per_layer + 2 * V * h + h  # untied embedding and head, final norm
    prof = profile_model(spec)
    assert prof.params == expected
    assert prof.layers[1].stats.params == per_layer
    assert prof.tp_units == (a, kv, ffn)


def test_user_two_tower_module_profiles_without_special_casing():
    spec = _model(module="tests.fixtures.user_models:two_tower", kwargs={"hidden": 64},
                  inputs=[{"shape": [32]}, {"shape": [48]}])
    prof = profile_model(spec, Precision.FP32)
    assert [lp.name for lp in prof.layers] == ["query", "item"]
    q, i = prof.layers[0].stats, prof.layers[1].stats
    assert q.params == 32 * 64 + 64 + 64 * 16 + 16
    assert q.forward_flops == 2 * (32 * 64 + 64 * 16)
    assert i.forward_flops == 2 * (48 * 64 + 64 * 16)
    # Linear -> ReLU -> Linear is a Megatron pair: the profiler finds it
    assert dict(q.tp_styles) == {"up": "colwise", "down": "rowwise"}
    assert q.tp_fwd_allreduces == 1 and q.saved_tp_bytes == pytest.approx(64 * 4)  # ReLU output, also down's input


def test_mlp_declares_pairs_across_layers():
    prof = profile_model(_model(family="mlp", input_dim=32, widths=[64, 64, 64], classes=10), Precision.FP32)
    styles = [dict(lp.stats.tp_styles) for lp in prof.layers]
    assert styles == [{"fc": "colwise"}, {"fc": "rowwise"}, {"fc": "colwise"}, {"fc": "rowwise"}]
    assert prof.layers[0].stats.output_tp_sharded and not prof.layers[1].stats.output_tp_sharded


def test_profile_of_a_huge_model_allocates_nothing():
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    prof = profile_model(_model(family="wide_linear", input_dim=10**9, hidden=16, classes=2), Precision.FP32)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert prof.params == 10**9 * 16 + 16 + 16 * 2 + 2
    assert (after - before) * 1024 < 200e6  # 64 GB of weights never materialise
    assert prof.feature_dim == 10**9


def test_generic_tp_plan_names_the_pairs_of_any_module():
    spec = _model(module="tests.fixtures.user_models:two_tower", kwargs={"hidden": 64},
                  inputs=[{"shape": [32]}, {"shape": [48]}])
    plan = dict(profile_model(spec).facts.tp_plan)  # what the profiler found is what the runtime applies
    assert plan == {"query.up": "colwise", "query.down": "rowwise", "item.up": "colwise", "item.down": "rowwise"}


def test_transformers_llama_config_profiles_on_meta():
    spec = _model(transformers={"config": "LlamaConfig", "seq_len": 64, "hidden_size": 256, "intermediate_size": 688,
                                "num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 1000})
    prof = profile_model(spec)
    h, kv, ffn, V, L = 256, 2 * 32, 688, 1000, 3
    per_layer = h * h + 2 * h * kv + h * h + 3 * h * ffn + 2 * h
    assert prof.params == L * per_layer + 2 * V * h + h
    block = next(lp.stats for lp in prof.layers if lp.stats.kind == "LlamaDecoderLayer")
    assert dict(block.tp_styles) == {"self_attn.q_proj": "colwise", "self_attn.k_proj": "colwise", "self_attn.v_proj": "colwise",
                                     "self_attn.o_proj": "rowwise", "mlp.gate_proj": "colwise", "mlp.up_proj": "colwise",
                                     "mlp.down_proj": "rowwise"}  # transformers' own plan (config.base_model_tp_plan)
