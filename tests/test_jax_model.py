"""moderngpt2.jax against the PyTorch model loaded from the same checkpoint directory, in float32 on the CPU.

For every setting of the matrix: logits within 1e-4, the same 32 greedy tokens, loss and gradients within 1e-4
relative, and PyTorch -> JAX -> PyTorch leaves every weight bit-identical.
"""

import copy
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM

from moderngpt2 import ModernGPT2Config
from moderngpt2 import ModernGPT2ForCausalLM as TorchModernGPT2ForCausalLM
from moderngpt2.training.optim import build_parameter_groups

pytest.importorskip("flax.nnx")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from moderngpt2.jax import ModernGPT2ForCausalLM  # noqa: E402
from moderngpt2.jax.modeling_moderngpt2 import checkpoint_name  # noqa: E402
from moderngpt2.jax.training import Trainer, adamw  # noqa: E402

VOCAB = 96
PLE = dict(use_per_layer_embedding=True, per_layer_vocab_size=40, per_layer_hidden_size=8)
SETTINGS = {
    "softcap": dict(attn_logit_softcapping=20.0, final_logit_softcapping=5.0),
    "no_softcap": dict(),
    "sliding_window": dict(n_layer=3, sliding_window=3, attn_logit_softcapping=50.0),
    "gqa_untied": dict(num_key_value_heads=2, tie_word_embeddings=False, head_dim=24, query_pre_attn_scalar=20),
    "mqa": dict(num_key_value_heads=1, n_inner=96),
    "ple_scaled_add": dict(PLE, per_layer_combination_method="scaled_add", final_logit_softcapping=30.0),
    "ple_concat": dict(PLE, per_layer_combination_method="concat", sliding_window=4),
    "ple_gated": dict(PLE, per_layer_combination_method="gated", per_layer_gate_activation="gelu"),
}


def random_batch(rows=2, length=10, seed=0):
    return np.random.RandomState(seed).randint(3, VOCAB, (rows, length))


@pytest.fixture(scope="module", params=list(SETTINGS))
def pair(request, tmp_path_factory):
    """(setting, PyTorch model, JAX model, checkpoint directory) with random weights far from the init."""
    torch.manual_seed(0)
    config = ModernGPT2Config(model_size_name="tiny", vocab_size=VOCAB, n_embd=48, **SETTINGS[request.param])
    model = TorchModernGPT2ForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
        if config.use_per_layer_embedding:  # a stored map that is not Gemma3n's rule
            model.set_per_layer_token_map(torch.randint(0, config.per_layer_vocab_size, (VOCAB,)))
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return request.param, model, ModernGPT2ForCausalLM.from_pretrained(str(path)), path


def test_logits_match(pair):
    _, torch_model, jax_model, _ = pair
    ids = random_batch()
    with torch.no_grad():
        expected = torch_model(torch.tensor(ids)).logits.numpy()
    logits, _ = jax_model(jnp.asarray(ids))
    assert np.abs(np.asarray(logits) - expected).max() < 1e-4


def test_greedy_generation_matches(pair):
    _, torch_model, jax_model, _ = pair
    ids = random_batch(length=6, seed=1)
    with torch.no_grad():
        expected = torch_model.generate(torch.tensor(ids), max_new_tokens=32, do_sample=False, pad_token_id=0)
    np.testing.assert_array_equal(jax_model.generate(ids, max_new_tokens=32), expected.numpy())


def test_loss_and_gradients_match(pair):
    _, torch_model, jax_model, _ = pair
    ids = random_batch(rows=3, length=12, seed=2)
    torch_model.zero_grad()
    expected = torch_model(torch.tensor(ids), labels=torch.tensor(ids)).loss
    expected.backward()
    trainer = Trainer(jax_model, adamw())
    loss, grads = jax.jit(trainer.loss_and_grads)(trainer.params, jnp.asarray(ids))  # one compile, not per op
    assert float(loss) == pytest.approx(expected.item(), rel=1e-4)
    torch_grads = {name: param.grad.numpy() for name, param in torch_model.named_parameters()}
    jax_grads = torch_layout(grads)
    assert jax_grads.keys() == torch_grads.keys()
    for name, grad in jax_grads.items():
        scale = np.abs(torch_grads[name]).max()
        assert np.abs(grad - torch_grads[name]).max() <= 1e-4 * scale, name


def test_round_trip_keeps_every_weight_bit_identical(pair, tmp_path):
    _, torch_model, jax_model, path = pair
    jax_model.save_pretrained(str(tmp_path))
    original, written = load_file(os.path.join(path, "model.safetensors")), load_file(tmp_path / "model.safetensors")
    assert written.keys() == original.keys()  # a tied head stays absent
    for name, tensor in original.items():
        assert written[name].dtype == tensor.dtype and np.array_equal(written[name], tensor), name
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    for name, tensor in torch_model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    ids = torch.tensor(random_batch(seed=3))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, torch_model(ids).logits)


@pytest.mark.parametrize("pair", ["ple_concat"], indirect=True)  # per-layer inputs and a sliding window
def test_left_padded_batch_equals_each_row_alone(pair):
    _, torch_model, jax_model, _ = pair
    rows = [random_batch(1, 7, seed=4)[0], random_batch(1, 4, seed=5)[0]]
    ids = np.zeros((2, 7), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, 7 - len(row):], mask[i, 7 - len(row):] = row, 1
    batched = jax_model.generate(ids, mask, max_new_tokens=10)
    nll = jax_model.token_nll(ids, mask)
    for i, row in enumerate(rows):
        alone = jax_model.generate(row[None], max_new_tokens=10)
        np.testing.assert_array_equal(batched[i, 7 - len(row):], alone[0])
        np.testing.assert_allclose(nll[i, 7 - len(row):], jax_model.token_nll(row[None])[0], rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        expected = torch_model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=10,
                                        do_sample=False, pad_token_id=0)
    np.testing.assert_array_equal(batched, expected.numpy())


def torch_layout(state):
    """{PyTorch parameter name: array in PyTorch's layout} of an NNX state."""
    return {checkpoint_name(key): np.asarray(value[...]).T if key[-1] == "kernel" else np.asarray(value[...])
            for key, value in nnx.to_flat_state(state)}


@pytest.mark.parametrize("pair", ["ple_gated"], indirect=True)
def test_adamw_step_matches_the_torch_optimizer_of_moderngpt2_train(pair):
    """Same decay groups, betas and gradient clipping as `moderngpt2 train`: one step, the same weights.

    Adam's first step is lr * g / (|g| + eps): with eps at its 1e-8 a gradient near 1e-9 (float32 noise between
    two implementations) moves by a large share of lr, so the step is compared at eps=1e-4 where it is smooth.
    """
    _, torch_model, jax_model, _ = pair
    ids = random_batch(rows=2, length=8, seed=6)
    # a weight decay this large moves a decayed weight by lr * 0.5 * |w| ~ 5e-5, far above the tolerance
    learning_rate, weight_decay = 1e-3, 0.5
    reference = copy.deepcopy(torch_model).train()
    groups = build_parameter_groups(reference, learning_rate, weight_decay)
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.95), eps=1e-4)
    reference(torch.tensor(ids), labels=torch.tensor(ids)).loss.backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    optimizer.step()
    trainer = Trainer(jax_model, adamw(learning_rate=learning_rate, weight_decay=weight_decay, eps=1e-4,
                                       max_grad_norm=0.5))
    trainer.step(ids)
    for name, value in torch_layout(trainer.params).items():
        expected = reference.state_dict()[name].numpy()
        moved = np.abs(expected - torch_model.state_dict()[name].numpy()).max()
        assert moved > 0.5 * learning_rate, name  # every parameter took a step
        assert np.abs(value - expected).max() < 1e-3 * learning_rate, name


def test_data_parallel_step_over_two_devices_equals_one_device(tmp_path):
    """The Mesh-sharded step (batch split over 2 host devices) gives the single-device step's loss and weights."""
    torch.manual_seed(0)
    config = ModernGPT2Config(model_size_name="tiny", vocab_size=VOCAB, n_embd=48, **SETTINGS["ple_scaled_add"])
    TorchModernGPT2ForCausalLM(config).save_pretrained(tmp_path)
    script = textwrap.dedent(f"""
        import jax, numpy as np
        from moderngpt2.jax import ModernGPT2ForCausalLM
        from moderngpt2.jax.training import Trainer, adamw, data_parallel_mesh
        assert len(jax.devices()) == 2, jax.devices()
        ids = np.random.RandomState(0).randint(3, {VOCAB}, (4, 12))
        runs = {{}}
        for mesh in (None, data_parallel_mesh()):
            model = ModernGPT2ForCausalLM.from_pretrained({str(tmp_path)!r})
            trainer = Trainer(model, adamw(learning_rate=1e-3, eps=1e-4), mesh=mesh)
            losses = [trainer.step(ids) for _ in range(2)]
            runs[mesh is None] = (losses, jax.tree_util.tree_leaves(jax.device_get(trainer.params)))
        (single, single_params), (sharded, sharded_params) = runs[True], runs[False]
        np.testing.assert_allclose(sharded, single, rtol=1e-5)
        assert single[1] < single[0]
        for a, b in zip(single_params, sharded_params):
            np.testing.assert_allclose(a, b, atol=1e-6)
        print("ok", single)
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize("pair", ["gqa_untied"], indirect=True)
def test_sharded_checkpoint_loads(pair, tmp_path):
    _, torch_model, jax_model, _ = pair
    torch_model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert len(json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]) > 1
    reloaded = ModernGPT2ForCausalLM.from_pretrained(str(tmp_path))
    for (key, value), (_, original) in zip(nnx.to_flat_state(nnx.state(reloaded)),
                                           nnx.to_flat_state(nnx.state(jax_model))):
        assert np.array_equal(value[...], original[...]), key


@pytest.mark.parametrize("pair", ["softcap"], indirect=True)
def test_sampling_and_end_of_sequence(pair):
    _, torch_model, jax_model, _ = pair
    ids = random_batch(rows=3, length=5, seed=7)
    greedy = jax_model.generate(ids, max_new_tokens=12)
    # top_k=1 leaves only the most likely token, so sampling must follow the greedy path
    np.testing.assert_array_equal(jax_model.generate(ids, max_new_tokens=12, do_sample=True, top_k=1, seed=3), greedy)
    sample = dict(max_new_tokens=12, do_sample=True, temperature=1.5, top_k=20, top_p=0.9)
    first, again = jax_model.generate(ids, seed=5, **sample), jax_model.generate(ids, seed=5, **sample)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(jax_model.generate(ids, seed=6, **sample), first)
    assert first.dtype == np.int64 and first.shape == (3, 17)
    # a row that emits eos continues with pad, as transformers' generate does
    eos = int(greedy[0, 8])
    stopped = jax_model.generate(ids, max_new_tokens=12, eos_token_id=eos, pad_token_id=0)
    with torch.no_grad():
        expected = torch_model.generate(torch.tensor(ids), max_new_tokens=12, do_sample=False, eos_token_id=eos,
                                        pad_token_id=0).numpy()
    np.testing.assert_array_equal(stopped[:, :expected.shape[1]], expected)
    assert (stopped[0, 9:] == 0).all() and stopped.shape == (3, 17)


@pytest.mark.parametrize("pair", ["ple_gated"], indirect=True)
def test_per_layer_learning_rate_scale_applies_to_the_per_layer_parameters_alone(pair):
    _, _, jax_model, _ = pair
    before = torch_layout(nnx.state(jax_model, nnx.Param))
    trainer = Trainer(jax_model, adamw(learning_rate=1e-3, per_layer_learning_rate_scale=0.0))
    trainer.step(random_batch(rows=2, length=8, seed=8))
    after = torch_layout(trainer.params)
    per_layer = ("embed_tokens_per_layer", "per_layer_projection", "per_layer_gate")
    for name, value in after.items():
        moved = np.abs(value - before[name]).max()
        assert (moved == 0) == any(part in name.split(".") for part in per_layer), name


@pytest.mark.parametrize("pair", ["no_softcap"], indirect=True)
def test_training_leaves_the_model_usable_until_written_back(pair):
    jax_model = ModernGPT2ForCausalLM.from_pretrained(str(pair[3]))  # its own copy: it gets trained
    ids = random_batch(rows=2, length=8, seed=9)
    before = jax_model.token_nll(ids)
    trainer = Trainer(jax_model, adamw(learning_rate=1e-2))
    trainer.step(ids)
    np.testing.assert_array_equal(jax_model.token_nll(ids), before)  # the step updated the trainer's copy alone
    trainer.step(ids)
    trained = trainer.write_back(jax_model).token_nll(ids)
    assert trained.mean() < before.mean()
    trainer.step(ids)
    np.testing.assert_array_equal(jax_model.token_nll(ids), trained)
