"""Cached generation for the Keras model: a fixed-size KV cache and one compiled decode step reused for every token.

The cache holds `prompt + max_new_tokens` slots per layer from the start, so every decode step has the same
shapes: on the TensorFlow backend the step is traced once by `tf.function` and replayed (the write slot is a
tensor argument, not a Python int). The prompt is one forward that fills slots [0, S). Left padding is handled
as transformers' generate does it: position ids count each row's own tokens, padded key slots are masked.

Token choice runs on the host in numpy, in transformers' order (temperature, top-k, top-p), from a
`numpy.random.Generator` seeded with `seed`, so sampling is reproducible on every backend.
"""

import keras
import numpy as np
from keras import ops

from ..errors import UserError
from .positions import positions_from_mask


def compiled(function):
    """`tf.function` on the TensorFlow backend; other backends run the step eagerly."""
    if keras.backend.backend() != "tensorflow":
        return function
    import tensorflow as tf

    return tf.function(function, reduce_retracing=True)


def decode_functions(model):
    """The model's (prefill, step) pair, made once per model and reused by every generate call."""
    functions = getattr(model, "_decode_functions", None)
    if functions is None:
        def forward(input_ids, position_ids, key_valid, caches, start):
            hidden_states, caches = model.model(input_ids, position_ids, key_valid, caches=caches, start=start)
            return model.compute_logits(hidden_states[:, -1, :]), caches

        functions = model._decode_functions = (compiled(forward), compiled(forward))
    return functions


def empty_caches(config, batch, slots, dtype):
    shape = (batch, config["num_key_value_heads"], slots, config["head_dim"])
    return [(ops.zeros(shape, dtype), ops.zeros(shape, dtype)) for _ in range(config["n_layer"])]


def warp_logits(logits, temperature, top_k, top_p):
    """Float64 logits with what temperature, top-k and top-p exclude set to -inf (transformers' warpers)."""
    logits = logits.astype(np.float64) / temperature
    if top_k > 0:
        kth_largest = np.sort(logits, axis=-1)[:, -min(top_k, logits.shape[-1])][:, None]
        logits = np.where(logits < kth_largest, -np.inf, logits)
    if top_p < 1.0:
        order = np.argsort(logits, axis=-1, kind="stable")  # ascending
        sorted_logits = np.take_along_axis(logits, order, axis=-1)
        cumulative = np.cumsum(softmax(sorted_logits), axis=-1)
        remove = cumulative <= 1.0 - top_p
        remove[:, -1] = False  # always keep the most likely token
        removed = np.zeros_like(remove)
        np.put_along_axis(removed, order, remove, axis=-1)
        logits = np.where(removed, -np.inf, logits)
    return logits


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def choose_tokens(logits, do_sample, temperature, top_k, top_p, rng):
    """(B, V) logits -> (B,) int64 next tokens: argmax, or a draw from the warped distribution."""
    if not do_sample:
        return np.argmax(logits, axis=-1).astype(np.int64)
    probs = softmax(warp_logits(logits, temperature, top_k, top_p))
    draws = rng.random((probs.shape[0], 1))
    return np.minimum((np.cumsum(probs, axis=-1) < draws).sum(axis=-1), probs.shape[-1] - 1).astype(np.int64)


def check_arguments(input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p):
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise UserError(f"input_ids must be 2-D (batch, prompt length) and non-empty, got shape {input_ids.shape}")
    if attention_mask.shape != input_ids.shape:
        raise UserError(f"attention_mask has shape {attention_mask.shape}, input_ids {input_ids.shape}; "
                        "they must match")
    if not attention_mask[:, -1].all():
        raise UserError("attention_mask has padding at the end of a row; pad prompts on the left")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise UserError(f"max_new_tokens={max_new_tokens!r} must be a non-negative integer")
    if not temperature > 0 or top_k < 0 or not 0.0 < top_p <= 1.0:
        raise UserError(f"sampling settings temperature={temperature}, top_k={top_k}, top_p={top_p}: need "
                        "temperature > 0, top_k >= 0 and 0 < top_p <= 1")


def generate(model, input_ids, attention_mask=None, *, max_new_tokens=20, do_sample=False, temperature=1.0,
             top_k=0, top_p=1.0, seed=0, eos_token_id=None, pad_token_id=None):
    """Prompt plus `max_new_tokens` tokens, int64 (B, S + max_new_tokens).

    A row that has produced `eos_token_id` continues with `pad_token_id` (or eos when there is none), like
    transformers' generate; generation stops early once every row has finished.
    """
    input_ids = np.asarray(input_ids).astype(np.int64)
    attention_mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
    check_arguments(input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p)
    batch, prompt_length = input_ids.shape
    slots = prompt_length + max_new_tokens
    output = np.empty((batch, slots), dtype=np.int64)
    output[:, :prompt_length] = input_ids
    if max_new_tokens == 0:
        return output
    fill_token = pad_token_id if pad_token_id is not None else eos_token_id
    key_valid = np.ones((batch, slots), dtype=bool)
    key_valid[:, :prompt_length] = attention_mask != 0
    key_valid = ops.convert_to_tensor(key_valid)
    positions = ops.convert_to_numpy(positions_from_mask(attention_mask)).astype(np.int32)
    prefill, step = decode_functions(model)
    caches = empty_caches(model.config, batch, slots, model.model.embed_tokens.dtype)
    logits, caches = prefill(ops.convert_to_tensor(input_ids.astype(np.int32)), ops.convert_to_tensor(positions),
                             key_valid, caches, ops.convert_to_tensor(0, "int32"))
    rng = np.random.default_rng(seed)
    next_position = positions[:, -1:] + 1
    finished = np.zeros(batch, dtype=bool)
    for t in range(max_new_tokens):
        tokens = choose_tokens(ops.convert_to_numpy(logits), do_sample, temperature, top_k, top_p, rng)
        if eos_token_id is not None:
            tokens = np.where(finished, fill_token, tokens)
            finished |= tokens == eos_token_id
        output[:, prompt_length + t] = tokens
        if finished.all():
            output[:, prompt_length + t + 1:] = fill_token
            break
        if t + 1 < max_new_tokens:
            logits, caches = step(ops.convert_to_tensor(tokens[:, None].astype(np.int32)),
                                  ops.convert_to_tensor(next_position), key_valid, caches,
                                  ops.convert_to_tensor(prompt_length + t, "int32"))
            next_position = next_position + 1
    return output
