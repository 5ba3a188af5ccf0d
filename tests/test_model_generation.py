"""Generation through the transformers Cache API equals full recomputation, with padding, static caches, windows."""

import pytest
import torch
from transformers import DynamicCache

from moderngpt2 import ModernGPT2Config, ModernGPT2ForCausalLM

VOCAB = 97
NEW_TOKENS = 32
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def tiny_model(**overrides):
    # A larger init std spreads the logits, so greedy choices are far from ties between the compared paths.
    config = ModernGPT2Config(**{"model_size_name": "tiny", "vocab_size": VOCAB, "initializer_range": 0.1,
                                 "eos_token_id": None, "pad_token_id": 0, **overrides})
    return ModernGPT2ForCausalLM(config).eval()


def greedy_by_recomputation(model, ids, steps):
    """argmax of a full forward over the whole sequence at every step, no cache."""
    with torch.no_grad():
        for _ in range(steps):
            logits = model(ids, use_cache=False).logits
            ids = torch.cat((ids, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return ids


def generate(model, ids, new_tokens=NEW_TOKENS, **kwargs):
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, **kwargs)


# window 5 < prompt 7 + 32 new tokens: sliding cache layers drop old keys while generating
SETTINGS = {
    "plain": dict(),
    "softcap-window": dict(attn_logit_softcapping=3.0, final_logit_softcapping=10.0, sliding_window=5),
    "per-layer": dict(sliding_window=5, use_per_layer_embedding=True, per_layer_vocab_size=40,
                      per_layer_hidden_size=8, per_layer_combination_method="gated"),
}


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_greedy_generate_with_cache_equals_recomputation(setting, cache_implementation):
    model = tiny_model(**SETTINGS[setting])
    prompt = torch.randint(1, VOCAB, (2, 7))
    expected = greedy_by_recomputation(model, prompt, NEW_TOKENS)
    generated = generate(model, prompt, cache_implementation=cache_implementation)
    assert generated.shape == (2, 7 + NEW_TOKENS)
    assert torch.equal(generated, expected)


def test_cached_logits_equal_recomputed_logits_step_by_step():
    model = tiny_model(attn_logit_softcapping=3.0, sliding_window=4)
    ids = torch.randint(1, VOCAB, (1, 12))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        first = model(ids[:, :5], past_key_values=cache, use_cache=True).logits
        steps = [model(ids[:, i : i + 1], past_key_values=cache, use_cache=True).logits for i in range(5, 12)]
    torch.testing.assert_close(torch.cat([first, *steps], dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["eager", "sdpa", "flex_attention"])
@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_left_padded_batch_generates_what_each_prompt_generates_alone(backend, cache_implementation):
    overrides = dict(sliding_window=6, attn_implementation=backend)
    if backend != "sdpa":
        overrides["attn_logit_softcapping"] = 5.0
    model = tiny_model(**overrides)
    prompts = [torch.randint(1, VOCAB, (1, n)) for n in (3, 8)]
    batch = torch.zeros(2, 8, dtype=torch.long)
    mask = torch.zeros(2, 8, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        batch[row, -prompt.shape[1] :] = prompt
        mask[row, -prompt.shape[1] :] = 1
    # 8 + 12 tokens > window 6; fewer steps than elsewhere because uncompiled flex_attention is slow on the CPU
    together = generate(model, batch, new_tokens=12, attention_mask=mask, cache_implementation=cache_implementation)
    for row, prompt in enumerate(prompts):
        alone = generate(model, prompt, new_tokens=12, cache_implementation=cache_implementation)
        assert torch.equal(together[row, 8:], alone[0, prompt.shape[1] :]), row


def test_explicit_per_layer_ids_in_generate_are_extended_with_mapped_ids():
    model = tiny_model(use_per_layer_embedding=True, per_layer_vocab_size=40, per_layer_hidden_size=8)
    token_map = torch.randint(0, 40, (VOCAB,))
    model.set_per_layer_token_map(token_map)
    prompt = torch.randint(1, VOCAB, (2, 6))
    derived = generate(model, prompt)
    explicit = generate(model, prompt, per_layer_input_ids=token_map[prompt])
    assert torch.equal(explicit, derived)
    # different prompt annotations change what is generated, so the explicit ids are really used
    other = generate(model, prompt, per_layer_input_ids=(token_map[prompt] + 1) % 40)
    assert not torch.equal(other, derived)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_compiled_flex_attention_generation_on_cuda_equals_recomputation(cache_implementation):
    model = tiny_model(attn_logit_softcapping=3.0, sliding_window=5).cuda()
    assert model.attention_backend(torch.device("cuda")) == "flex_attention"
    prompt = torch.randint(1, VOCAB, (2, 7), device="cuda")
    expected = greedy_by_recomputation(model, prompt, NEW_TOKENS)
    assert torch.equal(generate(model, prompt, cache_implementation=cache_implementation), expected)
