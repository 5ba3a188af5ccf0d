"""The transformers (and torch) hooks the model relies on still exist where it expects them.

Each test fails when a hook moves or is renamed, so the next API change shows up here first; docs/transformers_api.md
lists them and why we need them. Behaviour behind each hook is tested with numbers elsewhere (named per test).
"""

import dataclasses
import inspect

import torch
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from moderngpt2 import ModernGPT2Config, ModernGPT2ForCausalLM
from moderngpt2.modeling_moderngpt2 import CACHE_NAME, ModernGPT2PreTrainedModel


def parameters(function):
    return set(inspect.signature(function).parameters)


def test_the_cache_name_probe_agrees_with_generate_and_every_output_class():
    # behaviour: test_cache_argument.py
    for output_class in (BaseModelOutputWithPast, CausalLMOutputWithPast):
        assert CACHE_NAME in {field.name for field in dataclasses.fields(output_class)}
    assert CACHE_NAME in parameters(GenerationMixin.prepare_inputs_for_generation)


def test_attention_implementation_hooks_exist_with_the_arguments_we_override():
    # behaviour: test_model_backends.py (explicit choice, automatic choice, refusals)
    assert {"attn_implementation", "is_init_check"} <= parameters(PreTrainedModel._check_and_adjust_attn_implementation)
    assert {"requested_attention", "is_init_check"} <= parameters(PreTrainedModel.get_correct_attn_implementation)
    assert isinstance(inspect.getattr_static(PreTrainedModel, "_can_set_attn_implementation"), classmethod)
    # the base class's heuristic would refuse us (our attention does not use its registry); ours must answer
    assert ModernGPT2PreTrainedModel._can_set_attn_implementation() is True
    config = ModernGPT2Config(model_size_name="tiny", vocab_size=32)
    assert hasattr(config, "_attn_implementation")  # read by select_attention_backend


def test_our_attention_functions_take_transformers_signature_on_a_local_interface():
    # behaviour: test_model_attention_interface.py (a function registered from outside), test_model_backends.py
    from transformers.models.gemma2 import modeling_gemma2
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    from moderngpt2.attention_moderngpt2 import ATTENTION_FUNCTIONS, MODERNGPT2_ATTENTION

    assert isinstance(ATTENTION_FUNCTIONS, AttentionInterface)
    theirs = inspect.signature(modeling_gemma2.eager_attention_forward).parameters
    for name in MODERNGPT2_ATTENTION:
        function = ATTENTION_FUNCTIONS[name]
        assert function.__module__.endswith("attention_moderngpt2")
        ours = inspect.signature(function).parameters
        assert list(ours)[:5] == list(theirs)[:5] == ["module", "query", "key", "value", "attention_mask"]
        assert {"scaling", "dropout", "softcap"} <= set(theirs)  # the keywords Gemma2's layers pass
        keywords = {"scaling", "dropout", "softcap", "sliding_window"}
        assert all(ours[k].kind is inspect.Parameter.KEYWORD_ONLY for k in keywords), name
        assert list(ours)[-1] == "kwargs"
        if name in ALL_ATTENTION_FUNCTIONS._global_mapping:  # transformers' own stay untouched for other models
            assert ALL_ATTENTION_FUNCTIONS[name] is not function


def test_output_capturing_hooks_exist():
    # behaviour: test_model_forward.py::test_hidden_states_are_the_layer_inputs_then_the_normed_output
    from transformers.utils.output_capturing import capture_outputs

    assert callable(capture_outputs)
    assert set(ModernGPT2PreTrainedModel._can_record_outputs) == {"hidden_states", "attentions"}


def test_config_serialisation_hook_drops_our_runtime_flag():
    # behaviour: test_model_config.py::test_automatic_backend_flag_is_not_serialised
    assert "d" in parameters(PretrainedConfig._remove_keys_not_serialized)
    model = ModernGPT2ForCausalLM(ModernGPT2Config(model_size_name="tiny", vocab_size=32))
    assert model.config.attn_implementation_is_automatic is True
    assert "attn_implementation_is_automatic" not in model.config.to_dict()


def test_weight_init_and_tying_hooks():
    # behaviour: test_model_forward.py::test_initialisation_follows_gpt2_with_scaled_residual_projections
    assert "_init_weights" in vars(PreTrainedModel)
    model = ModernGPT2ForCausalLM(ModernGPT2Config(model_size_name="tiny", vocab_size=32))
    assert isinstance(ModernGPT2ForCausalLM._tied_weights_keys, dict)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_gradient_checkpointing_layer_wraps_forward_and_torch_module_apply_is_the_cast_path():
    # behaviour: test_model_conformance.py::test_gradient_checkpointing_gives_the_same_gradients and
    # test_model_forward.py::test_rope_frequencies_are_a_float32_buffer_kept_out_of_the_state_dict
    assert hasattr(GradientCheckpointingLayer, "gradient_checkpointing")
    assert "fn" in parameters(nn.Module._apply)
    model = ModernGPT2ForCausalLM(ModernGPT2Config(model_size_name="tiny", vocab_size=32)).to(torch.bfloat16)
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32


def test_generation_mask_hook_is_looked_up_by_name():
    # generate() asks the model for `create_masks_for_generate` before building 4-D masks for static caches;
    # ours returns the 2-D padding mask, from which the model builds its own masks (test_model_generation.py)
    source = inspect.getsource(GenerationMixin.prepare_inputs_for_generation)
    assert "create_masks_for_generate" in source
