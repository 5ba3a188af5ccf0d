"""ModernGPT2Config: presets, aliases, derived defaults, validation messages, serialisation, parallel plans."""

import json
import re

import pytest
from torch import nn
from transformers import Gemma2Config

from moderngpt2 import ModernGPT2Config, ModernGPT2ForCausalLM


@pytest.mark.parametrize(
    "name, layers, width, heads, kv_heads",
    [("small", 12, 768, 12, 4), ("medium", 24, 1024, 16, 4), ("large", 36, 1280, 20, 4), ("xl", 48, 1600, 25, 5)],
)
def test_gpt2_presets_have_gpt2_shapes_with_gqa(name, layers, width, heads, kv_heads):
    config = ModernGPT2Config(model_size_name=name)
    shape = (config.n_layer, config.n_embd, config.n_head, config.num_key_value_heads)
    assert shape == (layers, width, heads, kv_heads)
    assert config.head_dim == 64 and config.n_head * config.head_dim == config.n_embd
    assert config.num_key_value_heads < config.n_head
    assert config.n_inner == 4 * width


def test_tiny_preset_and_explicit_values_win():
    tiny = ModernGPT2Config(model_size_name="tiny")
    assert (tiny.n_layer, tiny.n_embd, tiny.n_head, tiny.num_key_value_heads, tiny.head_dim, tiny.n_positions) == (
        2, 64, 4, 2, 16, 128
    )
    overridden = ModernGPT2Config(model_size_name="small", n_layer=3, num_key_value_heads=12, n_positions=2048)
    assert (overridden.n_layer, overridden.n_embd, overridden.num_key_value_heads, overridden.n_positions) == (
        3, 768, 12, 2048
    )


def test_defaults_without_preset_and_derived_fields():
    config = ModernGPT2Config()
    assert (config.n_layer, config.n_embd, config.n_head, config.num_key_value_heads) == (12, 768, 12, 4)
    assert config.vocab_size == 32000 and config.n_positions == 1024
    assert config.n_inner == 3072  # None means 4 * n_embd
    assert config.query_pre_attn_scalar == config.head_dim
    assert config.layer_types == ["full_attention"] * 12
    assert config.activation_function == "gelu_pytorch_tanh" and config.tie_word_embeddings
    assert config.attn_logit_softcapping is None and config.final_logit_softcapping is None
    assert not config.use_per_layer_embedding and config.per_layer_vocab_size == 10000
    assert config.per_layer_hidden_size == 256 and config.per_layer_combination_method == "scaled_add"
    assert config.per_layer_gate_activation == "silu" and config.per_layer_projection_dropout == 0.0
    assert ModernGPT2Config(n_embd=96, n_inner=200).intermediate_size == 200


def test_standard_names_are_aliases_both_ways():
    config = ModernGPT2Config(hidden_size=128, num_hidden_layers=3, num_attention_heads=8, max_position_embeddings=64,
                              intermediate_size=300, num_key_value_heads=2)
    assert (config.n_embd, config.n_layer, config.n_head, config.n_positions, config.n_inner) == (128, 3, 8, 64, 300)
    config.hidden_size = 256
    assert config.n_embd == 256 and config.hidden_size == 256
    assert (config.num_hidden_layers, config.num_attention_heads, config.max_position_embeddings) == (3, 8, 64)
    assert config.intermediate_size == 300


def test_sliding_window_without_layer_types_alternates_like_gemma2():
    config = ModernGPT2Config(n_layer=4, sliding_window=16)
    assert config.layer_types == ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]


def test_save_and_reload_round_trip(tmp_path):
    config = ModernGPT2Config(model_size_name="tiny", vocab_size=101, attn_logit_softcapping=50.0, sliding_window=8,
                              use_per_layer_embedding=True, per_layer_combination_method="gated", eos_token_id=1)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "moderngpt2" and saved["n_embd"] == 64
    assert saved["layer_types"] == ["sliding_attention", "full_attention"]
    reloaded = ModernGPT2Config.from_pretrained(tmp_path)
    assert reloaded.to_dict() == config.to_dict()


def test_automatic_backend_flag_is_not_serialised(tmp_path):
    model = ModernGPT2ForCausalLM(ModernGPT2Config(model_size_name="tiny", vocab_size=50))
    assert model.config.attn_implementation_is_automatic
    model.config.save_pretrained(tmp_path)
    assert "attn_implementation_is_automatic" not in (tmp_path / "config.json").read_text()


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(model_size_name="huge"), r"model_size_name='huge'.*tiny, small, medium, large, xl"),
        (dict(n_head=12, num_key_value_heads=5),
         r"n_head=12 is not divisible by num_key_value_heads=5.*\[1, 2, 3, 4, 6, 12\]"),
        (dict(n_embd=0), r"n_embd=0 must be a positive integer"),
        (dict(n_layer=-1), r"n_layer=-1 must be a positive integer"),
        (dict(head_dim=2.5), r"head_dim=2.5 must be a positive integer"),
        (dict(vocab_size=0), r"vocab_size=0 must be a positive integer"),
        (dict(activation_function="swishy"),
         r"activation_function='swishy' is unknown; choose one of .*gelu_pytorch_tanh"),
        (dict(attn_logit_softcapping=0.0), r"attn_logit_softcapping=0.0 must be a positive number, or None"),
        (dict(final_logit_softcapping=-30.0), r"final_logit_softcapping=-30.0 must be a positive number"),
        (dict(sliding_window=0), r"sliding_window=0 must be a positive integer"),
        (dict(n_layer=2, layer_types=["full_attention"]), r"layer_types has 1 entries but n_layer=2"),
        (dict(n_layer=2, layer_types=["full_attention", "local"]),
         r"layer_types contains \['local'\].*full_attention, sliding_attention"),
        (dict(n_layer=2, layer_types=["full_attention", "sliding_attention"]), r"sliding_window is None"),
        (dict(rms_norm_eps=0.0), r"rms_norm_eps=0.0 must be a positive number"),
        (dict(resid_pdrop=1.0), r"resid_pdrop=1.0 must be a probability in \[0, 1\)"),
        (dict(per_layer_combination_method="sum"),
         r"per_layer_combination_method='sum' is unknown; choose one of scaled_add, concat, gated"),
        (dict(per_layer_gate_activation="tanh"),
         r"per_layer_gate_activation='tanh' is unknown; choose one of silu, gelu, gelu_pytorch_tanh, relu"),
        (dict(per_layer_hidden_size=0), r"per_layer_hidden_size=0 must be a positive integer"),
        (dict(per_layer_vocab_size=-5), r"per_layer_vocab_size=-5 must be a positive integer"),
        (dict(per_layer_projection_dropout=-0.1), r"per_layer_projection_dropout=-0.1 must be a probability"),
    ],
)
def test_impossible_settings_are_rejected_with_the_field_and_allowed_values(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        ModernGPT2Config(**kwargs)


def test_common_activations_are_accepted():
    for activation in ("gelu", "gelu_pytorch_tanh", "silu", "relu"):
        config = ModernGPT2Config(model_size_name="tiny", activation_function=activation)
        assert config.activation_function == activation


def test_tensor_parallel_plan_is_gemma2_s_and_splits_each_projection_by_its_direction():
    # head_dim 24: q/k/v widths (96/48) differ from the hidden size 64, so a projection's direction is unambiguous
    config = ModernGPT2Config(model_size_name="tiny", vocab_size=50, head_dim=24, use_per_layer_embedding=True,
                              per_layer_vocab_size=20, per_layer_hidden_size=8)
    plan = config.base_model_tp_plan
    # Gemma2 has our module names; its plan is the reference (5.17 adds `embed_tokens` itself for tied embeddings)
    assert plan.items() >= Gemma2Config.base_model_tp_plan.items()
    layer = ModernGPT2ForCausalLM(config).model.layers[0]
    split = {name: module for name, module in layer.named_modules()
             if isinstance(module, nn.Linear) and not name.startswith("per_layer_gate")}  # PLE stays replicated
    assert {f"layers.*.{name}" for name in split} == {key for key in plan if key.startswith("layers.")}
    for name, linear in split.items():
        # reading the hidden state: split the output features; writing back into it: split the input features
        assert plan[f"layers.*.{name}"] == ("rowwise" if linear.out_features == config.n_embd else "colwise"), name


def test_pipeline_plan_names_real_modules():
    config = ModernGPT2Config(model_size_name="tiny", vocab_size=50)
    names = [name for name, _ in ModernGPT2ForCausalLM(config).model.named_modules()]
    for pattern in config.base_model_pp_plan:
        regex = re.compile("^" + re.escape(pattern).replace(r"\*", r"\d+") + "$")
        assert any(regex.match(name) for name in names), pattern
