"""Training the Keras model with `fit`: pretokenized Parquet blocks as `tf.data`, the loss, AdamW.

    dataset = block_dataset("data", "train", batch_size=8)
    model.compile(optimizer=adamw(model), loss=causal_lm_loss)
    model.fit(dataset, epochs=1)

The dataset reads the layout `moderngpt2 pretokenize` writes (manifest.json + Parquet shards of fixed-length
`input_ids` blocks) with pyarrow, a row group (64K tokens) at a time. The loss is PyTorch's: the mean next-token
cross-entropy over the softcapped logits in float32. AdamW has `moderngpt2 train`'s defaults: lr 2.5e-4, betas
(0.9, 0.95), eps 1e-8, weight decay 0.01 on the matrices of linear maps only, gradients clipped to norm 1.0.
"""

import os

import keras
import tensorflow as tf
from keras import ops

from ..data.blocks import iter_shard_blocks
from ..data.layout import MAIN_COLUMN
from ..data.loader import _split_entry, read_manifest
from ..errors import UserError
from ..training.optim import GAIN_LIKE_NAME_SUFFIXES

# Tables looked up by id: weight decay would shrink a rare token's row just for being rare (see training/optim.py).
EMBEDDING_TABLES = ("model.embed_tokens.weight", "model.embed_tokens_per_layer.weight")


def block_dataset(path, split="train", batch_size=8, shuffle_buffer=1024, seed=0):
    """`(input_ids, input_ids)` batches of shape (batch_size, block_size), int32; the labels are shifted inside
    `causal_lm_loss`. Blocks are shuffled through a buffer of `shuffle_buffer` (0: file order); an incomplete
    last batch is dropped so every step has the same shape (one trace)."""
    manifest = read_manifest(path)
    entry = _split_entry(manifest, split, path)
    if manifest.get("storage", "parquet") != "parquet":
        raise UserError(f"{path} holds Megatron files; the TensorFlow input reads Parquet shards — pretokenize "
                        "again with --format parquet")
    block_size = manifest["block_size"]
    shards = [os.path.join(path, shard) for shard in entry["shards"]]

    def blocks():
        for shard in shards:
            for group in iter_shard_blocks(shard, MAIN_COLUMN, block_size):
                yield from group

    dataset = tf.data.Dataset.from_generator(blocks, output_signature=tf.TensorSpec((block_size,), tf.int32))
    # The manifest knows the count: Keras then shows steps per epoch and does not warn at the end of an epoch.
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(entry["blocks"]))
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed)
    dataset = dataset.batch(batch_size, drop_remainder=True).map(lambda ids: (ids, ids))
    return dataset.prefetch(tf.data.AUTOTUNE)


def causal_lm_loss(labels, logits):
    """Per-token cross-entropy (B, S-1) of labels[:, 1:] given logits[:, :-1], in float32; Keras averages it,
    which is PyTorch's mean over predicted tokens."""
    return keras.losses.sparse_categorical_crossentropy(labels[:, 1:], ops.cast(logits[:, :-1], "float32"),
                                                        from_logits=True)


def decayed_variable_names(model):
    """Checkpoint names of the variables weight decay applies to: matrices of linear maps, never embedding tables
    or gains (the same rule as `moderngpt2.training.optim.decayed_parameter_names`)."""
    return {
        name for name, (variable, _) in model.named_variables().items()
        if variable.trainable and len(variable.shape) >= 2 and name not in EMBEDDING_TABLES
        and not name.endswith(GAIN_LIKE_NAME_SUFFIXES)
    }


def adamw(model, learning_rate=2.5e-4, weight_decay=0.01, beta_1=0.9, beta_2=0.95, epsilon=1e-8,
          global_clipnorm=1.0):
    """Keras AdamW with `moderngpt2 train`'s defaults and decay groups; `learning_rate` may be a schedule."""
    optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay, beta_1=beta_1,
                                       beta_2=beta_2, epsilon=epsilon, global_clipnorm=global_clipnorm)
    decayed = decayed_variable_names(model)
    optimizer.exclude_from_weight_decay(var_list=[variable for name, (variable, _) in model.named_variables().items()
                                                  if variable.trainable and name not in decayed])
    return optimizer
