"""`inputs_embeds` means what `get_input_embeddings()` returns, as in Gemma2: the scale lives inside the module."""

import pytest
import torch
import torch.nn.functional as F
from transformers import Gemma3nTextConfig
from transformers.models.gemma3n.modeling_gemma3n import Gemma3nTextModel

from moderngpt2 import ModernGPT2Config, ModernGPT2ForCausalLM

VOCAB = 83
PER_LAYER = dict(use_per_layer_embedding=True, per_layer_vocab_size=40, per_layer_hidden_size=8)


def tiny_model(**overrides):
    config = ModernGPT2Config(**{"model_size_name": "tiny", "vocab_size": VOCAB, "initializer_range": 0.1,
                                 "eos_token_id": None, "pad_token_id": 0, **overrides})
    return ModernGPT2ForCausalLM(config).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_model_of_embedded_ids_equals_model_of_ids(dtype):
    torch.manual_seed(0)
    model = tiny_model(attn_logit_softcapping=5.0, sliding_window=4).to(dtype)
    ids = torch.randint(1, VOCAB, (2, 7))
    with torch.no_grad():
        from_ids = model(input_ids=ids).logits
        from_embeds = model(inputs_embeds=model.get_input_embeddings()(ids)).logits
    torch.testing.assert_close(from_embeds, from_ids, atol=0, rtol=0)


def test_embedding_module_scales_by_the_rounded_normaliser_and_the_tied_head_reads_the_raw_weight():
    model = tiny_model(n_embd=768, n_head=12, num_key_value_heads=4, head_dim=64).to(torch.bfloat16)
    embed, ids = model.get_input_embeddings(), torch.tensor([[3, 5, 8]])
    with torch.no_grad():
        # sqrt(768) = 27.71 rounds to 27.75 in bfloat16: Gemma2 multiplies by the rounded normaliser
        expected = F.embedding(ids, embed.weight) * torch.tensor(27.75, dtype=torch.bfloat16)
        torch.testing.assert_close(embed(ids), expected, atol=0, rtol=0)
        hidden = model.model(ids).last_hidden_state
        torch.testing.assert_close(model(ids).logits, hidden @ embed.weight.T, atol=0, rtol=0)
    assert model.lm_head.weight is embed.weight
    assert list(model.state_dict())[:1] == ["model.embed_tokens.weight"]


def test_generate_from_embedded_prompt_equals_generate_from_ids():
    torch.manual_seed(1)
    model = tiny_model(sliding_window=5)
    prompt = torch.randint(1, VOCAB, (2, 6))
    settings = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False)
    with torch.no_grad():
        from_ids = model.generate(prompt, **settings)
        from_embeds = model.generate(inputs_embeds=model.get_input_embeddings()(prompt), **settings)
    assert torch.equal(from_embeds, from_ids[:, prompt.shape[1]:])  # with inputs_embeds, only new tokens return


def gemma3n_twin_of(model):
    """Gemma3n's text model holding our PLE weights, to compute its per-layer inputs."""
    config = model.config
    gemma = Gemma3nTextModel(Gemma3nTextConfig(
        vocab_size=config.vocab_size, vocab_size_per_layer_input=config.per_layer_vocab_size,
        hidden_size=config.hidden_size, hidden_size_per_layer_input=config.per_layer_hidden_size,
        num_hidden_layers=config.num_hidden_layers, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, laurel_rank=4, activation_sparsity_pattern=[0.0] * config.num_hidden_layers,
        num_kv_shared_layers=0, altup_num_inputs=2,
    )).eval()
    ours = model.model
    with torch.no_grad():
        gemma.embed_tokens.weight.copy_(ours.embed_tokens.weight)
        gemma.per_layer_model_projection.weight.copy_(ours.per_layer_projection.proj.weight)
        gemma.per_layer_projection_norm.weight.copy_(ours.per_layer_projection.norm.weight + 1.0)  # w vs (1 + w)
    return gemma


@pytest.mark.parametrize("combination", ["scaled_add", "concat", "gated"])
def test_per_layer_inputs_of_inputs_embeds_alone_are_the_projection_as_in_gemma3n(combination):
    torch.manual_seed(2)
    model = tiny_model(**PER_LAYER, per_layer_combination_method=combination)
    with torch.no_grad():
        model.model.per_layer_projection.norm.weight.normal_(0.0, 0.3)
    gemma = gemma3n_twin_of(model)
    ids = torch.randint(1, VOCAB, (2, 5))
    captured = []
    for layer in model.model.layers:
        layer.per_layer_gate.register_forward_hook(lambda mod, args, out: captured.append(args[1]))
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        torch.testing.assert_close(embeds, gemma.embed_tokens(ids), atol=0, rtol=0)
        expected = gemma.project_per_layer_inputs(embeds, None)  # (B, S, L, d): no per-layer embedding term
        logits = model(inputs_embeds=embeds).logits
        with_table = model(input_ids=ids).logits
    for layer_index, per_layer_input in enumerate(captured[: model.config.num_hidden_layers]):
        torch.testing.assert_close(per_layer_input, expected[:, :, layer_index], atol=1e-6, rtol=0)
    assert (logits - with_table).abs().max() > 1e-3  # the per-layer table really is left out
