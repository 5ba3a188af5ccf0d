"""Keras `fit` on the tf.data input over data made by `moderngpt2 pretokenize`, with the project's AdamW groups."""

import copy
import math

import numpy as np
import pytest
import torch

from keras_tensorflow import require_keras_on_tensorflow

tf, keras = require_keras_on_tensorflow()

from moderngpt2 import ModernGPT2Config, ModernGPT2ForCausalLM  # noqa: E402
from moderngpt2.data.loader import load_block_dataset  # noqa: E402
from moderngpt2.errors import UserError  # noqa: E402
from moderngpt2.tf import ModernGPT2ForCausalLM as KerasCausalLM  # noqa: E402
from moderngpt2.tf.training import adamw, block_dataset, causal_lm_loss, decayed_variable_names  # noqa: E402
from moderngpt2.training.optim import build_parameter_groups, parameter_group_names  # noqa: E402

TINY = dict(vocab_size=320, n_layer=2, n_embd=32, n_head=4, num_key_value_heads=2, head_dim=8, n_inner=64,
            n_positions=32, final_logit_softcapping=30.0, attn_logit_softcapping=50.0, use_per_layer_embedding=True,
            per_layer_vocab_size=48, per_layer_hidden_size=8, per_layer_combination_method="gated")


@pytest.fixture(scope="module")
def data(tiny_assets):
    return str(tiny_assets["data"])


@pytest.fixture(scope="module")
def torch_model():
    torch.manual_seed(0)
    return ModernGPT2ForCausalLM(ModernGPT2Config(**TINY))


def test_dataset_yields_the_blocks_the_torch_loader_reads(data):
    dataset = block_dataset(data, "validation", batch_size=4, shuffle_buffer=0)
    blocks = load_block_dataset(data, "validation")
    assert int(dataset.cardinality()) == len(blocks) // 4  # known to Keras: steps per epoch, no end-of-data warning
    inputs, labels = next(iter(dataset))
    expected = np.stack([blocks[i]["input_ids"].numpy() for i in range(4)])
    np.testing.assert_array_equal(inputs.numpy(), expected)
    np.testing.assert_array_equal(labels.numpy(), expected)


def test_weight_decay_groups_equal_the_torch_optimizer_groups(torch_model):
    keras_model = KerasCausalLM(TINY | {"model_type": "moderngpt2"})
    groups = parameter_group_names(torch_model)
    torch_decayed = set(groups["decay"] + groups.get("per_layer_decay", []))
    assert decayed_variable_names(keras_model) == torch_decayed
    optimizer = adamw(keras_model)
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon, optimizer.weight_decay) == (0.9, 0.95, 1e-8, 0.01)
    for name, (variable, _) in keras_model.named_variables().items():
        if variable.trainable:
            assert optimizer._use_weight_decay(variable) == (name in torch_decayed), name


def test_one_adamw_step_matches_the_torch_optimizer_of_moderngpt2_train(torch_model, tmp_path):
    """Same decay groups, weight decay and gradient clipping as `moderngpt2 train`: one step, the same weights.

    Adam's first step is lr * g / (|g| + eps). Keras adds its eps to sqrt(v) before the bias correction, which at
    step 1 is PyTorch's eps times sqrt(1 - beta_2), so the two are given matching values; eps is 1e-4 so that
    gradients near float32 noise do not move by a large share of lr.
    """
    torch_model.save_pretrained(tmp_path)
    keras_model = KerasCausalLM.from_pretrained(str(tmp_path))
    ids = np.random.default_rng(0).integers(0, TINY["vocab_size"], size=(2, 16))
    # a weight decay this large moves a decayed weight by lr * 0.5 * |w| ~ 1e-5, far above the tolerance
    learning_rate, weight_decay = 1e-3, 0.5
    reference = copy.deepcopy(torch_model).train()
    optimizer = torch.optim.AdamW(build_parameter_groups(reference, learning_rate, weight_decay), betas=(0.9, 0.95),
                                  eps=1e-4)
    reference(torch.from_numpy(ids), labels=torch.from_numpy(ids)).loss.backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
    optimizer.step()

    keras_optimizer = adamw(keras_model, learning_rate=learning_rate, weight_decay=weight_decay,
                            epsilon=1e-4 * math.sqrt(1 - 0.95))
    variables = keras_model.trainable_variables
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(causal_lm_loss(ids, keras_model(ids.astype(np.int32), training=True)))
    keras_optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    before, after = torch_model.state_dict(), reference.state_dict()
    for name, (variable, transposed) in keras_model.named_variables().items():
        if not variable.trainable:
            continue
        value = variable.numpy().T if transposed else variable.numpy()
        assert np.abs(after[name].numpy() - before[name].numpy()).max() > 0.1 * learning_rate, name  # it moved
        assert np.abs(value - after[name].numpy()).max() < 1e-3 * learning_rate, name


def test_a_few_steps_of_fit_lower_the_loss(data, torch_model, tmp_path):
    torch_model.save_pretrained(tmp_path)
    model = KerasCausalLM.from_pretrained(str(tmp_path))
    held_out, _ = next(iter(block_dataset(data, "validation", batch_size=16, shuffle_buffer=0)))

    def held_out_loss():
        return float(tf.reduce_mean(causal_lm_loss(held_out, model(held_out))))

    before = held_out_loss()
    model.compile(optimizer=adamw(model, learning_rate=3e-3), loss=causal_lm_loss)
    history = model.fit(block_dataset(data, batch_size=8), epochs=1, steps_per_epoch=12, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert held_out_loss() < before - 0.5


def test_megatron_data_is_refused_with_a_user_error(tmp_path):
    (tmp_path / "manifest.json").write_text('{"format": "moderngpt2-pretokenized", "version": 1, "block_size": 8, '
                                            '"tokenizer_fingerprint": "x", "storage": "megatron", '
                                            '"splits": {"train": {"blocks": 1, "prefix": "train_text_document"}}}')
    with pytest.raises(UserError, match="--format parquet"):
        block_dataset(str(tmp_path))


@pytest.mark.parametrize("method", ["concat", "gated"])
def test_a_fresh_keras_model_starts_where_the_torch_init_does(method):
    config = TINY | {"per_layer_combination_method": method, "initializer_range": 0.05}
    reference = ModernGPT2ForCausalLM(ModernGPT2Config(**config)).state_dict()
    keras.utils.set_random_seed(0)
    fresh = KerasCausalLM(config | {"model_type": "moderngpt2"})
    for name, (variable, _) in fresh.named_variables().items():
        value, expected = variable.numpy(), reference[name].numpy()
        if name.endswith(("norm.weight", "per_layer_token_map", "combine_weight", "gate_logits")):
            np.testing.assert_array_equal(value, expected, err_msg=name)  # deterministic starts
        else:  # normal(0, std), residual projections std / sqrt(2 L)
            assert value.std() == pytest.approx(expected.std(), rel=0.25), name
