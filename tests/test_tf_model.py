"""The Keras/TensorFlow model against the PyTorch model loaded from the same checkpoint directory.

Every setting of the matrix is written once by PyTorch and loaded once by Keras (module-scoped fixtures), so the
traced generation steps are reused by every test of that setting.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from keras_tensorflow import require_keras_on_tensorflow

tf, keras = require_keras_on_tensorflow()

from moderngpt2 import ModernGPT2Config, ModernGPT2ForCausalLM
from moderngpt2.errors import UserError
from moderngpt2.tf import ModernGPT2ForCausalLM as KerasCausalLM
from moderngpt2.tf.training import causal_lm_loss

VOCAB = 97
NEW_TOKENS = 32
BASE = dict(vocab_size=VOCAB, n_layer=3, n_embd=32, n_head=4, num_key_value_heads=2, head_dim=8, n_inner=48,
            n_positions=64, eos_token_id=None, pad_token_id=None)
PLE = dict(use_per_layer_embedding=True, per_layer_vocab_size=40, per_layer_hidden_size=8)
# Together: softcap on/off, sliding window (4 < prompt + 32 new tokens), GQA and MQA, head_dim independent of
# n_embd / n_head, query_pre_attn_scalar != head_dim, untied head, and the three per-layer combinations.
SETTINGS = {
    "softcap-window-gqa": dict(attn_logit_softcapping=5.0, final_logit_softcapping=10.0, sliding_window=4),
    "no-softcap-mqa-untied": dict(num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=12,
                                  tie_word_embeddings=False),
    "ple-scaled_add": dict(PLE, attn_logit_softcapping=5.0, final_logit_softcapping=10.0,
                           per_layer_combination_method="scaled_add"),
    "ple-concat-window-mqa": dict(PLE, num_key_value_heads=1, sliding_window=4, per_layer_combination_method="concat"),
    "ple-gated-untied": dict(PLE, tie_word_embeddings=False, per_layer_combination_method="gated",
                             activation_function="gelu"),
}


def torch_model(setting):
    """A PyTorch model whose every parameter (gains, gate logits, token map included) is away from its init."""
    torch.manual_seed(0)
    model = ModernGPT2ForCausalLM(ModernGPT2Config(**{**BASE, **SETTINGS[setting]})).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    if model.config.use_per_layer_embedding:
        model.set_per_layer_token_map(torch.randint(0, model.config.per_layer_vocab_size, (VOCAB,)))
    return model


@pytest.fixture(scope="module", params=list(SETTINGS))
def pair(request, tmp_path_factory):
    """(setting, PyTorch model, Keras model, checkpoint directory) of one setting of the matrix."""
    directory = tmp_path_factory.mktemp(request.param)
    model = torch_model(request.param)
    model.save_pretrained(directory)
    return request.param, model, KerasCausalLM.from_pretrained(str(directory)), directory


def prompts(batch=2, length=7, seed=0):
    return np.random.default_rng(seed).integers(3, VOCAB, size=(batch, length))


def torch_logits(model, ids, **kwargs):
    with torch.no_grad():
        return model(torch.from_numpy(ids), **kwargs).logits.numpy()


def test_logits_match_pytorch(pair):
    setting, model, keras_model, _ = pair
    ids = prompts(length=12)
    error = np.abs(np.asarray(keras_model(ids.astype(np.int32))) - torch_logits(model, ids)).max()
    print(f"{setting}: logits max abs diff {error:.1e}")  # the figures of docs/frameworks.md (pytest -s)
    assert error < 1e-4


def test_greedy_generation_matches_pytorch(pair):
    _, model, keras_model, _ = pair
    ids = prompts()
    with torch.no_grad():
        expected = model.generate(torch.from_numpy(ids), attention_mask=torch.ones_like(torch.from_numpy(ids)),
                                  max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False).numpy()
    generated = keras_model.generate(ids, max_new_tokens=NEW_TOKENS)
    assert generated.dtype == np.int64 and generated.shape == (2, 7 + NEW_TOKENS)
    np.testing.assert_array_equal(generated, expected)


def test_loss_and_gradients_match_pytorch(pair):
    setting, model, keras_model, _ = pair
    ids = prompts(length=16, seed=1)
    model.zero_grad()
    loss = model(torch.from_numpy(ids), labels=torch.from_numpy(ids)).loss
    loss.backward()
    named = {name: variable for name, (variable, _) in keras_model.named_variables().items() if variable.trainable}
    with tf.GradientTape() as tape:
        keras_loss = tf.reduce_mean(causal_lm_loss(ids, keras_model(ids.astype(np.int32), training=True)))
    gradients = {name: tf.convert_to_tensor(gradient).numpy()  # embedding gradients arrive as IndexedSlices
                 for name, gradient in zip(named, tape.gradient(keras_loss, list(named.values())))}
    loss_error = abs(float(keras_loss) - loss.item()) / loss.item()
    assert loss_error <= 1e-4
    transposed = {name for name, (_, t) in keras_model.named_variables().items() if t}
    parameters = dict(model.named_parameters())
    assert set(parameters) == set(gradients)
    errors = {}
    for name, parameter in parameters.items():
        keras_grad = gradients[name].T if name in transposed else gradients[name]
        reference = parameter.grad.numpy()
        errors[name] = np.linalg.norm(keras_grad - reference) / np.linalg.norm(reference)
        assert errors[name] < 1e-4, (name, errors[name])
    print(f"{setting}: loss rel. diff {loss_error:.1e}, worst gradient rel. diff {max(errors.values()):.1e}")


def test_round_trip_through_keras_is_bit_identical(pair, tmp_path):
    _, model, keras_model, _ = pair
    keras_model.save_pretrained(str(tmp_path))
    reloaded = ModernGPT2ForCausalLM.from_pretrained(tmp_path).eval()
    original, back = model.state_dict(), reloaded.state_dict()
    assert set(original) == set(back)
    for name, tensor in original.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    ids = prompts()
    np.testing.assert_array_equal(torch_logits(reloaded, ids), torch_logits(model, ids))


@pytest.mark.parametrize("pair", ["ple-concat-window-mqa"], indirect=True)  # each prompt shape is traced anew
def test_left_padded_batch_equals_each_row_alone(pair):
    _, model, keras_model, _ = pair
    long_row, short_row = prompts(1, 7, seed=2)[0], prompts(1, 4, seed=3)[0]
    ids = np.stack([long_row, np.concatenate([[0, 0, 0], short_row])])
    mask = np.array([[1] * 7, [0, 0, 0, 1, 1, 1, 1]])
    batched = keras_model.generate(ids, mask, max_new_tokens=NEW_TOKENS)
    np.testing.assert_array_equal(batched[0], keras_model.generate(long_row[None], max_new_tokens=NEW_TOKENS)[0])
    np.testing.assert_array_equal(batched[1, 3:], keras_model.generate(short_row[None], max_new_tokens=NEW_TOKENS)[0])
    with torch.no_grad():
        expected = model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                  max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False).numpy()
    np.testing.assert_array_equal(batched, expected)
    padded_logits = np.asarray(keras_model({"input_ids": ids.astype(np.int32), "attention_mask": mask}))[1, 3:]
    alone_logits = np.asarray(keras_model(short_row[None].astype(np.int32)))[0]
    assert np.abs(padded_logits - alone_logits).max() < 1e-5


def test_token_nll_is_the_pytorch_loss_per_token(pair):
    _, model, keras_model, _ = pair
    ids = prompts(length=12, seed=4)
    nll = keras_model.token_nll(ids)
    assert nll.dtype == np.float32 and nll.shape == (2, 11)
    log_probs = torch.log_softmax(torch.from_numpy(torch_logits(model, ids)), dim=-1)[:, :-1]
    expected = -log_probs.gather(-1, torch.from_numpy(ids[:, 1:, None])).squeeze(-1).numpy()
    assert np.abs(nll - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("pair", ["softcap-window-gqa"], indirect=True)
def test_eos_finishes_a_row_like_transformers(pair):
    _, model, keras_model, _ = pair
    ids = prompts()
    greedy = keras_model.generate(ids, max_new_tokens=NEW_TOKENS)
    eos = int(greedy[0, 7 + 3])  # row 0 emits it after three tokens
    generated = keras_model.generate(ids, max_new_tokens=NEW_TOKENS, eos_token_id=eos, pad_token_id=1)
    with torch.no_grad():
        expected = model.generate(torch.from_numpy(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
                                  max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=eos,
                                  pad_token_id=1).numpy()
    np.testing.assert_array_equal(generated[:, :expected.shape[1]], expected)
    assert (generated[:, expected.shape[1]:] == 1).all()
    assert (generated[0, 7 + 4:] == 1).all()


@pytest.mark.parametrize("pair", ["ple-scaled_add"], indirect=True)
def test_sampling_is_seeded_and_top_k_1_is_greedy(pair):
    _, _, keras_model, _ = pair
    ids = prompts()
    settings = dict(max_new_tokens=12, do_sample=True, temperature=0.9, top_k=20, top_p=0.9)
    first = keras_model.generate(ids, seed=5, **settings)
    np.testing.assert_array_equal(first, keras_model.generate(ids, seed=5, **settings))
    assert not np.array_equal(first, keras_model.generate(ids, seed=6, **settings))
    np.testing.assert_array_equal(keras_model.generate(ids, max_new_tokens=12, do_sample=True, top_k=1, seed=7),
                                  keras_model.generate(ids, max_new_tokens=12))


def test_sampling_warpers_equal_transformers():
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from moderngpt2.tf.generation import warp_logits

    logits = np.random.default_rng(0).normal(size=(4, 50)) * 3
    expected = torch.from_numpy(logits)
    for warper in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(10), TopPLogitsWarper(0.8)):
        expected = warper(None, expected)
    np.testing.assert_allclose(warp_logits(logits, 0.7, 10, 0.8), expected.numpy(), rtol=1e-12)


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="config.json"):
        KerasCausalLM.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("pair", ["ple-gated-untied"], indirect=True)
def test_the_same_keras_code_runs_and_trains_on_the_jax_backend(pair, tmp_path):
    pytest.importorskip("jax")
    _, model, _, directory = pair
    ids = prompts()
    np.save(tmp_path / "prompts.npy", ids)
    worker = Path(__file__).parent / "workers" / "keras_jax_backend.py"
    subprocess.run([sys.executable, str(worker), str(directory), str(tmp_path / "prompts.npy"),
                    str(tmp_path / "out.npz"), "8"], check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    result = np.load(tmp_path / "out.npz")
    assert np.abs(result["logits"] - torch_logits(model, ids)).max() < 1e-4
    with torch.no_grad():
        expected = model.generate(torch.from_numpy(ids), attention_mask=torch.ones_like(torch.from_numpy(ids)),
                                  max_new_tokens=8, min_new_tokens=8, do_sample=False).numpy()
    np.testing.assert_array_equal(result["generated"], expected)
    losses = result["fit_losses"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


@pytest.mark.parametrize("pair", ["ple-gated-untied"], indirect=True)
def test_sharded_checkpoint_loads_like_a_single_file(pair, tmp_path):
    _, model, keras_model, _ = pair
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists() and not (tmp_path / "model.safetensors").exists()
    sharded = KerasCausalLM.from_pretrained(str(tmp_path))
    for name, (variable, _) in keras_model.named_variables().items():
        np.testing.assert_array_equal(sharded.named_variables()[name][0].numpy(), variable.numpy(), err_msg=name)


@pytest.mark.parametrize("pair", ["softcap-window-gqa"], indirect=True)
def test_weights_that_do_not_fit_the_config_are_a_user_error(pair, tmp_path):
    _, _, _, directory = pair
    shutil.copytree(directory, tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_inner": 40}))
    with pytest.raises(UserError, match="mlp.gate_proj.weight has shape"):
        KerasCausalLM.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**config, "use_per_layer_embedding": True}))
    with pytest.raises(UserError, match="missing"):
        KerasCausalLM.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("pair", ["ple-concat-window-mqa"], indirect=True)
def test_a_bfloat16_checkpoint_loads_widened_exactly(pair, tmp_path):
    _, model, _, directory = pair
    half = ModernGPT2ForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)
    half.save_pretrained(tmp_path)
    widened = KerasCausalLM.from_pretrained(str(tmp_path))
    state = half.state_dict()
    for name, (variable, transposed) in widened.named_variables().items():
        expected = state[name].float() if state[name].is_floating_point() else state[name]
        np.testing.assert_array_equal(variable.numpy().T if transposed else variable.numpy(), expected.numpy(),
                                      err_msg=name)
