"""Attention through transformers' AttentionInterface: what vLLM's Transformers backend relies on.

A function registered under a new name is called by every layer with transformers' signature, receives the
layer's quirks (scaling, softcap, window) and any extra forward keyword (vLLM passes its attention layers
that way), and reproduces our own logits.
"""

import pytest
import torch
from transformers import AttentionInterface

from moderngpt2 import ModernGPT2Config, ModernGPT2ForCausalLM

CALLS = []


def recording_attention(module, query, key, value, attention_mask, *, scaling, dropout, softcap, sliding_window,
                        **kwargs):
    """A from-scratch attention with transformers' signature; records what each layer handed it."""
    CALLS.append(dict(layer=module.layer_idx, sliding_window=sliding_window, softcap=softcap, scaling=scaling,
                      mask_shape=tuple(attention_mask.shape), extra=sorted(kwargs)))
    key = key.repeat_interleave(module.num_key_value_groups, dim=1)
    value = value.repeat_interleave(module.num_key_value_groups, dim=1)
    scores = query @ key.transpose(-1, -2) * scaling
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~attention_mask, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    return (weights @ value).transpose(1, 2), weights


AttentionInterface.register("recording_attention", recording_attention)


def build(attn_implementation=None):
    torch.manual_seed(0)
    config = ModernGPT2Config(model_size_name="tiny", n_layer=3, vocab_size=64, pad_token_id=0, sliding_window=3,
                              attn_logit_softcapping=4.0, final_logit_softcapping=10.0, query_pre_attn_scalar=20)
    model = ModernGPT2ForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    if attn_implementation:
        model.set_attn_implementation(attn_implementation)
    return model.eval()


def test_registered_function_is_called_by_every_layer_with_equal_logits():
    reference, model = build("eager"), build("recording_attention")
    assert type(model)._supports_attention_backend is True
    input_ids = torch.randint(1, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :2] = 0
    CALLS.clear()
    with torch.no_grad():
        expected = reference(input_ids=input_ids, attention_mask=attention_mask).logits
        actual = model(input_ids=input_ids, attention_mask=attention_mask, attention_instances="vllm-style").logits
    assert [call["layer"] for call in CALLS] == [0, 1, 2]
    assert [call["sliding_window"] for call in CALLS] == [3, None, 3]  # sliding, full, sliding
    assert all(call["softcap"] == 4.0 and call["scaling"] == pytest.approx(20**-0.5) for call in CALLS)
    assert all(call["mask_shape"] == (2, 1, 9, 9) and "attention_instances" in call["extra"] for call in CALLS)
    valid = attention_mask.bool()
    assert (actual - expected)[valid].abs().max() < 1e-5


def test_cached_generation_through_the_registered_function():
    reference, model = build("eager"), build("recording_attention")
    prompt = torch.randint(1, 64, (1, 5), generator=torch.Generator().manual_seed(2))
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        assert torch.equal(model.generate(prompt, **settings), reference.generate(prompt, **settings))


def test_transformers_own_functions_are_not_taken_for_ours():
    """transformers' flash_attention_3 expects its own mask format: refused, not silently misfed."""
    with pytest.raises(ValueError, match="flash_attention_3"):
        build("flash_attention_3")
