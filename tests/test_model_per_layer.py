"""Per-layer embeddings: Gemma3n parity, combinations, the token map and resizing, backends, checkpointing.

The bf16 smoke test of a per-layer model is in test_model_forward.py.
"""

import itertools

import pytest
import torch
from transformers import Gemma3nTextConfig
from transformers.activations import ACT2FN
from transformers.models.gemma3n.modeling_gemma3n import Gemma3nTextModel

from moderngpt2 import ModernGPT2Config, ModernGPT2ForCausalLM

VOCAB = 97
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def ple_config(**overrides):
    return ModernGPT2Config(**{
        "model_size_name": "tiny", "vocab_size": VOCAB, "use_per_layer_embedding": True,
        "per_layer_vocab_size": 40, "per_layer_hidden_size": 8, **overrides,
    })


def test_scaled_add_per_layer_inputs_equal_gemma3n():
    gemma_config = Gemma3nTextConfig(
        vocab_size=VOCAB, vocab_size_per_layer_input=40, hidden_size=64, hidden_size_per_layer_input=8,
        num_hidden_layers=2, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        laurel_rank=4, activation_sparsity_pattern=[0.0, 0.0], num_kv_shared_layers=0, altup_num_inputs=2,
    )
    gemma = Gemma3nTextModel(gemma_config).eval()
    with torch.no_grad():
        gemma.per_layer_projection_norm.weight.normal_(1.0, 0.3)
    ours = ModernGPT2ForCausalLM(ple_config()).eval().model
    with torch.no_grad():
        ours.embed_tokens.weight.copy_(gemma.embed_tokens.weight)
        ours.embed_tokens_per_layer.weight.copy_(gemma.embed_tokens_per_layer.weight)
        ours.per_layer_projection.proj.weight.copy_(gemma.per_layer_model_projection.weight)
        # Gemma3n's RMSNorm multiplies by w, ours by (1 + w)
        ours.per_layer_projection.norm.weight.copy_(gemma.per_layer_projection_norm.weight - 1.0)

    ids = torch.randint(0, VOCAB, (2, 9))
    captured = {}
    ours.layers[0].per_layer_gate.register_forward_hook(lambda mod, args, out: captured.update(first=args[1]))
    ours.layers[1].per_layer_gate.register_forward_hook(lambda mod, args, out: captured.update(second=args[1]))
    with torch.no_grad():
        embeds = gemma.embed_tokens(ids)
        # Gemma3n sends ids past its per-layer table to row 0 (inside get_per_layer_inputs since 5.2x, in its
        # forward before that); so does our default token map
        per_layer_ids = torch.where(ids < 40, ids, 0)
        expected = gemma.project_per_layer_inputs(embeds, gemma.get_per_layer_inputs(per_layer_ids))  # (B, S, L, d)
        ours(ids)
    torch.testing.assert_close(captured["first"], expected[:, :, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(captured["second"], expected[:, :, 1], atol=1e-6, rtol=0)


def test_per_layer_gate_follows_its_formula():
    model = ModernGPT2ForCausalLM(ple_config(per_layer_gate_activation="gelu")).eval()
    gate = model.model.layers[0].per_layer_gate
    with torch.no_grad():
        gate.norm.weight.normal_()
        h, p = torch.randn(2, 5, 64), torch.randn(2, 5, 8)
        inner = gate.up_proj(ACT2FN["gelu"](h @ gate.gate_proj.weight.T) * p)
        normed = inner / torch.sqrt(inner.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + gate.norm.weight)
        torch.testing.assert_close(gate(h, p), h + normed)


def test_concat_starts_equal_to_scaled_add_and_gated_starts_at_an_even_mix():
    scaled = ModernGPT2ForCausalLM(ple_config()).eval()
    concat = ModernGPT2ForCausalLM(ple_config(per_layer_combination_method="concat")).eval()
    gated = ModernGPT2ForCausalLM(ple_config(per_layer_combination_method="gated")).eval()
    assert concat.model.per_layer_projection.combine_weight.shape == (2, 16, 8)
    concat.load_state_dict(scaled.state_dict(), strict=False)
    gated.load_state_dict(scaled.state_dict(), strict=False)
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(concat(ids).logits, scaled(ids).logits, atol=1e-5, rtol=1e-5)
    weights = gated.model.per_layer_projection.mixing_weights()
    assert weights.shape == (2, 8) and torch.all(weights == 0.5)
    assert scaled.model.per_layer_projection.mixing_weights() is None
    with torch.no_grad():
        gated.model.per_layer_projection.gate_logits.fill_(30.0)  # all projection, no per-layer embedding
        projection_only = gated(ids).logits
        gated.model.embed_tokens_per_layer.weight.normal_()
        assert torch.allclose(gated(ids).logits, projection_only, atol=1e-5)


COMBINATIONS = list(itertools.product(("scaled_add", "concat", "gated"), ("silu", "gelu", "gelu_pytorch_tanh", "relu")))


@pytest.mark.parametrize("method, activation", COMBINATIONS)
def test_every_combination_and_activation_runs_and_trains_on_eager_and_sdpa(method, activation):
    config = ple_config(per_layer_combination_method=method, per_layer_gate_activation=activation,
                        sliding_window=3, attn_implementation="eager")
    model = ModernGPT2ForCausalLM(config)
    ids = torch.randint(0, VOCAB, (2, 8))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    losses = {}
    for backend in ("eager", "sdpa"):
        model.set_attn_implementation(backend)
        model.zero_grad()
        loss = model(ids, attention_mask=mask, labels=ids).loss
        loss.backward()
        losses[backend] = loss.detach()
        for name, param in model.named_parameters():
            if "per_layer" in name:
                assert param.grad is not None and torch.isfinite(param.grad).all(), name
    torch.testing.assert_close(losses["sdpa"], losses["eager"], atol=1e-6, rtol=1e-6)
    if activation == "silu":  # flex_attention is slow uncompiled on the CPU: one activation per combination
        model.eval()
        with torch.no_grad():
            reference = model(ids, attention_mask=mask).logits
            model.set_attn_implementation("flex_attention")
            flex = model(ids, attention_mask=mask).logits
        torch.testing.assert_close(flex[mask.bool()], reference[mask.bool()], atol=1e-5, rtol=1e-5)


def test_explicit_ids_equal_to_the_mapped_ones_give_identical_logits():
    model = ModernGPT2ForCausalLM(ple_config()).eval()
    token_map = torch.randint(0, 40, (VOCAB,))
    model.set_per_layer_token_map(token_map.tolist())
    ids = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        derived = model(ids).logits
        explicit = model(ids, per_layer_input_ids=token_map[ids]).logits
        different = model(ids, per_layer_input_ids=torch.zeros_like(ids)).logits
    assert torch.equal(explicit, derived)
    assert not torch.allclose(different, derived)
    default = ModernGPT2ForCausalLM(ple_config()).model.per_layer_token_map
    assert torch.equal(default, torch.where(torch.arange(VOCAB) < 40, torch.arange(VOCAB), 0))


def test_token_map_is_saved_and_reloaded_with_the_model(tmp_path):
    model = ModernGPT2ForCausalLM(ple_config()).eval()
    token_map = torch.randint(0, 40, (VOCAB,))
    model.model.set_per_layer_token_map(token_map)  # on the base model, same buffer as through the head
    model.save_pretrained(tmp_path)
    reloaded = ModernGPT2ForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(reloaded.model.per_layer_token_map, token_map)
    ids = torch.randint(0, VOCAB, (1, 6))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


def vocabulary_style_map(unk_id=4):
    """Like a per-layer vocabulary file: 30 chosen main ids get rows 5..34 of their own, all others the unknown row."""
    token_map = torch.full((VOCAB,), unk_id)
    chosen = torch.randperm(VOCAB)[:30]
    token_map[chosen] = torch.arange(5, 35)
    return token_map


def test_growing_the_vocabulary_sends_new_ids_to_the_unknown_row_of_a_custom_map(tmp_path):
    model = ModernGPT2ForCausalLM(ple_config()).eval()
    token_map = vocabulary_style_map()
    model.set_per_layer_token_map(token_map)
    model.resize_token_embeddings(VOCAB + 8)
    expected = torch.cat((token_map, torch.full((8,), 4)))
    assert model.config.vocab_size == VOCAB + 8
    assert torch.equal(model.model.per_layer_token_map, expected)
    ids = torch.randint(0, VOCAB + 8, (2, 12))
    ids[:, -3:] = torch.tensor([VOCAB, VOCAB + 4, VOCAB + 7])  # new tokens take part
    with torch.no_grad():
        derived = model(ids).logits
        explicit = model(ids, per_layer_input_ids=expected[ids]).logits
    assert derived.shape[-1] == VOCAB + 8 and torch.equal(derived, explicit)
    model.save_pretrained(tmp_path)
    reloaded = ModernGPT2ForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(reloaded.model.per_layer_token_map, expected)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, derived)


@pytest.mark.parametrize("vocab_size, new_size", [(30, 45), (VOCAB, VOCAB + 5)])
def test_growing_the_vocabulary_keeps_gemma3n_s_default_map(vocab_size, new_size):
    model = ModernGPT2ForCausalLM(ple_config(vocab_size=vocab_size))
    model.resize_token_embeddings(new_size)
    ids = torch.arange(new_size)
    assert torch.equal(model.model.per_layer_token_map, torch.where(ids < 40, ids, 0))  # new ids below 40 keep theirs


def test_explicit_unknown_row_padding_and_shrinking():
    model = ModernGPT2ForCausalLM(ple_config()).eval()
    token_map = vocabulary_style_map(unk_id=2)
    model.set_per_layer_token_map(token_map)
    model.resize_token_embeddings(VOCAB + 1, pad_to_multiple_of=16, per_layer_unk_id=39)  # 98 -> 112
    assert model.model.per_layer_token_map.shape == (112,)
    assert torch.equal(model.model.per_layer_token_map[VOCAB:], torch.full((15,), 39))
    ids = torch.randint(0, 90, (1, 9))
    with torch.no_grad():
        before = model(ids).logits
        model.resize_token_embeddings(90)
        after = model(ids).logits
    assert torch.equal(model.model.per_layer_token_map, token_map[:90])
    torch.testing.assert_close(after, before[..., :90], atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"per_layer_unk_id=40 must be a row of the per-layer table.*\[0, "
                                         r"per_layer_vocab_size=40\)"):
        model.resize_token_embeddings(100, per_layer_unk_id=40)
    assert model.config.vocab_size == 90 and model.model.embed_tokens.weight.shape[0] == 90  # nothing half-done


@pytest.mark.parametrize(
    "token_map, message",
    [
        (list(range(VOCAB - 1)), r"shape \(96,\); it needs one entry per main token id, shape \(97,\)"),
        ([0] * (VOCAB - 1) + [40], r"ids in \[0, 40\]; they must lie in \[0, per_layer_vocab_size=40\)"),
        ([-1] + [0] * (VOCAB - 1), r"ids in \[-1, 0\]"),
        (torch.zeros(VOCAB), "must hold integer ids"),
    ],
)
def test_set_per_layer_token_map_validates(token_map, message):
    model = ModernGPT2ForCausalLM(ple_config())
    with pytest.raises(ValueError, match=message):
        model.set_per_layer_token_map(token_map)
    with pytest.raises(ValueError, match="use_per_layer_embedding=True"):
        ModernGPT2ForCausalLM(ple_config(use_per_layer_embedding=False)).set_per_layer_token_map(list(range(VOCAB)))


def test_inputs_embeds_with_explicit_per_layer_ids_equal_input_ids():
    model = ModernGPT2ForCausalLM(ple_config()).eval()
    ids = torch.randint(0, VOCAB, (1, 4))
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        explicit = model(inputs_embeds=embeds, per_layer_input_ids=model.model.map_per_layer_ids(ids)).logits
        torch.testing.assert_close(explicit, model(ids).logits, atol=0, rtol=0)


def test_gradient_checkpointing_with_per_layer_embeddings_gives_the_same_gradients():
    model = ModernGPT2ForCausalLM(ple_config(per_layer_combination_method="gated", attn_implementation="eager"))
    ids = torch.randint(0, VOCAB, (2, 9))
    results = []
    for checkpointing in (False, True):
        if checkpointing:
            (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
        model.zero_grad()
        loss = model(ids, labels=ids).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert torch.equal(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, atol=1e-7, rtol=1e-6)
