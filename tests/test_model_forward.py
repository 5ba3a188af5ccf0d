"""Forward numerics of ModernGPT2: shapes, building blocks against re-derivations, Gemma2 parity, init, loss paths."""

import ast
import math
import pathlib

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, Gemma2Config, Gemma2ForCausalLM
from transformers.dynamic_module_utils import get_class_from_dynamic_module

import moderngpt2
from moderngpt2 import (
    ModernGPT2Config,
    ModernGPT2ForCausalLM,
    ModernGPT2ForSequenceClassification,
    ModernGPT2ForTokenClassification,
    ModernGPT2Model,
)
from moderngpt2.attention_moderngpt2 import build_attention_masks
from moderngpt2.modeling_moderngpt2 import (
    ModernGPT2RMSNorm,
    ModernGPT2RotaryEmbedding,
    apply_rotary_pos_emb,
    causal_lm_loss_from_logits,
)

VOCAB = 97
# The model's code: saved next to every checkpoint, so it may import only torch, transformers and these files.
MODEL_FILES = ("modeling_moderngpt2.py", "configuration_moderngpt2.py", "attention_moderngpt2.py",
               "loss_moderngpt2.py", "softcap_moderngpt2.py", "per_layer_moderngpt2.py")


def tiny_config(**overrides):
    return ModernGPT2Config(**{"model_size_name": "tiny", "vocab_size": VOCAB, **overrides})


def randomise_norms(model, std=0.3):
    """Zero-initialised (1 + w) gains would hide mistakes in the norm placement; give them values."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0.0, std)
    return model


def test_forward_shapes_of_every_head():
    config = tiny_config(num_labels=3, pad_token_id=0)
    ids = torch.randint(1, VOCAB, (2, 11))
    hidden = ModernGPT2Model(config)(ids)
    assert hidden.last_hidden_state.shape == (2, 11, 64)
    causal = ModernGPT2ForCausalLM(config)(ids, output_hidden_states=True, output_attentions=True)
    assert causal.logits.shape == (2, 11, VOCAB)
    assert len(causal.hidden_states) == config.n_layer + 1 and causal.hidden_states[0].shape == (2, 11, 64)
    assert causal.attentions is None or len(causal.attentions) == config.n_layer
    assert ModernGPT2ForCausalLM(config)(ids, logits_to_keep=1).logits.shape == (2, 1, VOCAB)
    assert ModernGPT2ForSequenceClassification(config)(ids).logits.shape == (2, 3)
    assert ModernGPT2ForTokenClassification(config)(ids).logits.shape == (2, 11, 3)
    assert isinstance(ModernGPT2ForCausalLM(config)(ids, return_dict=False), tuple)


def test_hidden_states_are_the_layer_inputs_then_the_normed_output():
    """What output capturing records: the first layer's input (before its per-layer gate), every later layer's
    input, and the final normed state, recomputed here layer by layer."""
    config = tiny_config(n_layer=3, use_per_layer_embedding=True, per_layer_vocab_size=40, per_layer_hidden_size=8)
    model = ModernGPT2Model(config).eval()
    ids = torch.randint(0, VOCAB, (2, 6))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        per_layer = model.per_layer_inputs(ids, model.embed_tokens(ids), None)
        masks = build_attention_masks(config.layer_types, None, None, 0, 6, ids.device)
        rope = model.rotary_emb(out.hidden_states[0], torch.arange(6)[None])
        expected = [model.embed_tokens(ids)]
        for i, layer in enumerate(model.layers):
            expected.append(layer(expected[-1], per_layer[:, :, i], attention_mask=masks[layer.attention_type],
                                  attn_backend="eager", position_embeddings=rope))
        expected[-1] = model.norm(expected[-1])
    assert len(out.hidden_states) == config.n_layer + 1
    for ours, theirs in zip(out.hidden_states, expected):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state, atol=0, rtol=0)


def test_eager_returns_attention_weights_that_are_causal():
    model = ModernGPT2ForCausalLM(tiny_config(attn_implementation="eager"))
    weights = model(torch.randint(0, VOCAB, (1, 6)), output_attentions=True).attentions[0]
    assert weights.shape == (1, 4, 6, 6)
    assert torch.all(weights.triu(1) == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 4, 6))


def test_rmsnorm_is_float32_with_one_plus_weight():
    norm = ModernGPT2RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    x32 = x.float()
    expected = (x32 / torch.sqrt((x32**2).mean(-1, keepdim=True) + 1e-6) * (1 + norm.weight)).to(torch.bfloat16)
    assert norm(x).dtype == torch.bfloat16
    torch.testing.assert_close(norm(x), expected, atol=0, rtol=0)


def test_rope_rotates_pairs_by_position_times_frequency_even_past_n_positions():
    config = tiny_config(rope_theta=10000.0)
    rope = ModernGPT2RotaryEmbedding(config)
    positions = torch.tensor([[0, 1, 7, 127, 5000]])  # n_positions is 128: 5000 must still work
    q = torch.randn(1, 2, 5, 16)
    k = torch.randn(1, 1, 5, 16)
    q_rot, k_rot = apply_rotary_pos_emb(q, k, *rope(q, positions))

    def rotate(x):  # pairs (i, i + D/2) rotated by angle p * theta^(-2i/D), written as complex multiplication
        half = x.shape[-1] // 2
        freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float64) * 2 / 16)
        angles = positions[0, :, None].double() * freqs  # (S, D/2)
        z = torch.complex(x[..., :half].double(), x[..., half:].double()) * torch.polar(torch.ones_like(angles), angles)
        return torch.cat((z.real, z.imag), dim=-1).float()

    torch.testing.assert_close(q_rot, rotate(q), atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(k_rot, rotate(k), atol=2e-4, rtol=1e-4)
    long = torch.randint(0, VOCAB, (1, 300))  # more tokens than n_positions
    assert torch.isfinite(ModernGPT2ForCausalLM(config)(long).logits).all()


def test_rope_frequencies_are_a_float32_buffer_kept_out_of_the_state_dict(tmp_path):
    model = ModernGPT2ForCausalLM(tiny_config(rope_theta=500.0))
    rope = model.model.rotary_emb
    expected = 1.0 / 500.0 ** (torch.arange(0, 16, 2).float() / 16)
    torch.testing.assert_close(rope.inv_freq, expected, atol=0, rtol=1e-7)
    assert not any("inv_freq" in name for name in model.state_dict())
    model.to(torch.bfloat16)  # casts floating buffers; a bf16 frequency would drift at long positions
    assert rope.inv_freq.dtype == torch.float32
    torch.testing.assert_close(rope.inv_freq, expected, atol=0, rtol=1e-7)
    model.save_pretrained(tmp_path)
    loaded = ModernGPT2ForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).model.rotary_emb
    assert loaded.inv_freq.dtype == torch.float32 and torch.equal(loaded.inv_freq, rope.inv_freq)
    # forward reads the buffer: doubling every frequency is the same as doubling every position
    positions = torch.tensor([[0, 3, 1000]])
    x = torch.zeros(1, 3, 16)
    doubled_positions = rope(x, 2 * positions)
    with torch.no_grad():
        rope.inv_freq.mul_(2.0)
    for got, want in zip(rope(x, positions), doubled_positions):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_attention_matches_a_straightforward_rederivation_with_gqa_softcap_and_scaling():
    config = tiny_config(n_layer=1, head_dim=24, query_pre_attn_scalar=10, attn_logit_softcapping=2.0,
                         attn_implementation="eager")
    model = randomise_norms(ModernGPT2Model(config)).eval()
    layer = model.layers[0]
    ids = torch.randint(0, VOCAB, (2, 7))
    captured = {}
    layer.self_attn.register_forward_hook(lambda mod, args, kwargs, out: captured.update(x=args[0], out=out[0]),
                                          with_kwargs=True)
    with torch.no_grad():
        model(ids)
        x = captured["x"]  # (B, S, H) input of the attention
        q = layer.self_attn.q_proj(x).view(2, 7, 4, 24).transpose(1, 2)
        k = layer.self_attn.k_proj(x).view(2, 7, 2, 24).transpose(1, 2)
        v = layer.self_attn.v_proj(x).view(2, 7, 2, 24).transpose(1, 2)
        cos, sin = model.rotary_emb(x, torch.arange(7)[None])
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)  # query heads 0,1 share kv head 0
        scores = q @ k.transpose(-1, -2) / math.sqrt(10)
        scores = 2.0 * torch.tanh(scores / 2.0)
        scores = scores.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 7, 96)
        torch.testing.assert_close(captured["out"], layer.self_attn.o_proj(out), atol=1e-6, rtol=1e-5)


def test_final_softcap_bounds_logits_and_matches_tanh_formula():
    capped = ModernGPT2ForCausalLM(tiny_config(final_logit_softcapping=0.5))
    plain = ModernGPT2ForCausalLM(tiny_config())
    plain.load_state_dict(capped.state_dict())
    ids = torch.randint(0, VOCAB, (2, 5))
    with torch.no_grad():
        logits = capped(ids).logits
        torch.testing.assert_close(logits, 0.5 * torch.tanh(plain(ids).logits / 0.5))
    assert logits.abs().max() < 0.5


def test_embeddings_are_scaled_by_sqrt_hidden_in_the_activation_dtype():
    model = ModernGPT2Model(tiny_config(n_embd=768, n_head=12, num_key_value_heads=4, head_dim=64)).to(torch.bfloat16)
    ids = torch.tensor([[3, 5]])
    out = model(ids, output_hidden_states=True).hidden_states[0]
    # sqrt(768) = 27.71 rounds to 27.75 in bfloat16; Gemma2 multiplies by the rounded normaliser
    raw = F.embedding(ids, model.embed_tokens.weight)
    torch.testing.assert_close(out, raw * torch.tensor(27.75, dtype=torch.bfloat16), atol=0, rtol=0)


def test_state_dict_of_gemma2_loads_one_to_one_and_gives_equal_logits():
    gemma_config = Gemma2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, max_position_embeddings=256, query_pre_attn_scalar=32,
        sliding_window=6, attn_logit_softcapping=5.0, final_logit_softcapping=3.0, rope_theta=500.0,
        attn_implementation="eager", pad_token_id=0,
    )
    gemma = randomise_norms(Gemma2ForCausalLM(gemma_config)).eval()
    ours = ModernGPT2ForCausalLM(ModernGPT2Config(
        vocab_size=VOCAB, n_embd=64, n_inner=160, n_layer=4, n_head=4, num_key_value_heads=2, head_dim=24,
        n_positions=256, query_pre_attn_scalar=32, sliding_window=6, layer_types=gemma_config.layer_types,
        attn_logit_softcapping=5.0, final_logit_softcapping=3.0, rope_theta=500.0,
    )).eval()
    ours.load_state_dict(gemma.state_dict(), strict=True)
    ids = torch.randint(0, VOCAB, (2, 20))  # longer than the window
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, gemma(ids).logits, atol=1e-5, rtol=1e-5)


def test_initialisation_follows_gpt2_with_scaled_residual_projections():
    config = tiny_config(n_layer=8, n_embd=256, n_head=4, num_key_value_heads=2, head_dim=64, vocab_size=4000)
    model = ModernGPT2ForCausalLM(config)
    residual_std = 0.02 / math.sqrt(2 * 8)
    for layer in model.model.layers:
        assert layer.self_attn.o_proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
        assert layer.mlp.down_proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
        assert layer.self_attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert layer.mlp.gate_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
        for norm in (layer.input_layernorm, layer.post_attention_layernorm, layer.pre_feedforward_layernorm,
                     layer.post_feedforward_layernorm):
            assert torch.all(norm.weight == 0)
    assert model.model.embed_tokens.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert all(param.mean().abs() < 0.01 for param in model.parameters())


def test_from_pretrained_keeps_the_loaded_weights(tmp_path):
    model = randomise_norms(ModernGPT2ForCausalLM(tiny_config()))
    model.save_pretrained(tmp_path)
    reloaded = ModernGPT2ForCausalLM.from_pretrained(tmp_path)
    for (name, saved), (_, loaded) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(saved, loaded), name
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight


def naive_loss_and_grads(model, ids, labels, **kwargs):
    model.zero_grad()
    loss = causal_lm_loss_from_logits(model(ids).logits, labels, **kwargs)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def chunked_loss_and_grads(model, ids, labels, **kwargs):
    model.zero_grad()
    out = model(ids, labels=labels, **kwargs)
    assert out.logits is None  # the chunked path never materialises the full logits
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_chunked_loss_equals_naive_loss_and_gradients():
    model = ModernGPT2ForCausalLM(tiny_config(final_logit_softcapping=2.0, attn_implementation="eager")).double()
    model.loss_chunk_size = 7  # 2 x 13 positions -> four chunks, the last one partial
    ids = torch.randint(0, VOCAB, (2, 13))
    labels = ids.clone()
    labels[0, 3:6] = -100
    reference_loss, reference_grads = naive_loss_and_grads(model, ids, labels)
    loss, grads = chunked_loss_and_grads(model, ids, labels)
    assert torch.allclose(loss, reference_loss, atol=1e-6, rtol=0)
    for name in reference_grads:
        assert torch.allclose(grads[name], reference_grads[name], atol=1e-6, rtol=0), name
    # the naive reference itself is the shifted mean cross-entropy
    manual = F.cross_entropy(model(ids).logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(reference_loss, manual, atol=1e-12)


def test_num_items_in_batch_divides_the_summed_loss():
    model = ModernGPT2ForCausalLM(tiny_config()).double()
    model.loss_chunk_size = 5
    ids = torch.randint(0, VOCAB, (2, 9))
    mean_loss = model(ids, labels=ids).loss
    summed = model(ids, labels=ids, num_items_in_batch=torch.tensor(1)).loss
    assert torch.allclose(summed, mean_loss * 16)  # 2 x 8 predicted positions
    assert torch.allclose(model(ids, labels=ids, num_items_in_batch=32).loss, mean_loss / 2)
    with_logits = model(ids, labels=ids, return_logits=True)
    assert with_logits.logits.shape == (2, 9, VOCAB) and torch.allclose(with_logits.loss, mean_loss)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    model = ModernGPT2ForCausalLM(tiny_config(attn_logit_softcapping=20.0, attn_implementation="eager"))
    model.train()
    ids = torch.randint(0, VOCAB, (2, 12))
    reference_loss, reference_grads = chunked_loss_and_grads(model, ids, ids)
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()  # the newer name of gradient_checkpointing_enable (deprecated since transformers 5.2x)
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    loss, grads = chunked_loss_and_grads(model, ids, ids)
    assert torch.equal(loss, reference_loss)
    for name in reference_grads:
        torch.testing.assert_close(grads[name], reference_grads[name], atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [dict(attn_logit_softcapping=30.0, final_logit_softcapping=15.0),
     dict(use_per_layer_embedding=True, per_layer_vocab_size=40, per_layer_hidden_size=8,
          per_layer_combination_method="concat")],
    ids=["softcaps", "per-layer-concat"],
)
def test_bfloat16_forward_is_close_to_float32(overrides):
    model = ModernGPT2ForCausalLM(tiny_config(**overrides)).eval()
    ids = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        reference = model(ids).logits
        low = model.to(torch.bfloat16)(ids).logits
    assert low.dtype == torch.bfloat16
    assert (low.float() - reference).abs().max() < 0.05 * reference.abs().max()


def test_sequence_classification_pools_the_last_real_token():
    config = tiny_config(num_labels=2, pad_token_id=0)
    model = ModernGPT2ForSequenceClassification(config).eval()
    ids = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]])
    mask = (ids != 0).long()
    with torch.no_grad():
        pooled = model(ids, attention_mask=mask).logits
        alone = model(ids[:1, :3]).logits
        by_pad_id = model(ids).logits
    torch.testing.assert_close(pooled[0], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(by_pad_id, pooled, atol=1e-5, rtol=1e-5)
    loss = model(ids, attention_mask=mask, labels=torch.tensor([0, 1])).loss
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_both_classification_heads_score_the_same_hidden_states():
    config = tiny_config(num_labels=3)
    sequence = ModernGPT2ForSequenceClassification(config).eval()
    token = ModernGPT2ForTokenClassification(config).eval()
    token.load_state_dict(sequence.state_dict())
    ids = torch.randint(1, VOCAB, (2, 6))
    with torch.no_grad():
        per_token = token(ids).logits  # (B, S, 3)
        pooled = sequence(ids).logits  # (B, 3): no mask and no pad id, so the last position
    torch.testing.assert_close(pooled, per_token[:, -1], atol=0, rtol=0)
    labels = torch.randint(0, 3, (2, 6))
    expected = F.cross_entropy(per_token.reshape(-1, 3), labels.reshape(-1))
    torch.testing.assert_close(token(ids, labels=labels).loss, expected)


def test_modeling_code_is_self_contained():
    allowed_roots = {"dataclasses", "math", "functools", "importlib", "inspect", "torch", "transformers",
                     "flash_attn"}  # flash_attn: optional
    for name in MODEL_FILES:
        tree = ast.parse((pathlib.Path(moderngpt2.__file__).parent / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert all(alias.name.split(".")[0] in allowed_roots for alias in node.names), name
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] in allowed_roots, (name, node.module)
            elif isinstance(node, ast.ImportFrom):
                assert f"{node.module}.py" in MODEL_FILES, (name, node.module)


def test_checkpoint_with_remote_code_loads_through_trust_remote_code(tmp_path):
    """save_pretrained copies the model files next to the weights; transformers loads them from there."""
    config = tiny_config(attn_logit_softcapping=30.0, use_per_layer_embedding=True, per_layer_vocab_size=40,
                         per_layer_hidden_size=8)
    # importing the package registers both for remote code; checked here because the export depends on it
    assert ModernGPT2Config._auto_class == "AutoConfig"
    assert ModernGPT2ForCausalLM._auto_class == "AutoModelForCausalLM"
    model = ModernGPT2ForCausalLM(config).eval()
    model.save_pretrained(tmp_path)
    for name in MODEL_FILES:
        assert (tmp_path / name).is_file(), name
    assert AutoConfig.from_pretrained(tmp_path).auto_map["AutoModelForCausalLM"].startswith("modeling_moderngpt2.")
    # In this process the installed package is registered for the model type, so load the copied class directly.
    remote_class = get_class_from_dynamic_module("modeling_moderngpt2.ModernGPT2ForCausalLM", tmp_path)
    assert remote_class.__module__.startswith("transformers_modules"), remote_class.__module__
    remote = remote_class.from_pretrained(tmp_path).eval()
    ids = torch.arange(10)[None]
    with torch.no_grad():
        torch.testing.assert_close(remote(ids).logits, model(ids).logits)
