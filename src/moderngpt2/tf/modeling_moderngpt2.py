"""ModernGPT2 as Keras 3 layers: the PyTorch model's architecture, weight names and numerics.

Every computation mirrors `moderngpt2/modeling_moderngpt2.py` (RMSNorm with a (1 + w) gain in float32, rotate-half
RoPE, grouped-query attention with Gemma2 query scaling, attention and final softcapping, sliding-window layers,
GeGLU, sandwich norms, embedding scaling rounded to the activation dtype, per-layer embeddings), so a checkpoint
gives the same logits in both. The layers use `keras.ops` only; `tensorflow` is needed for `tf.function`
generation and the `tf.data` training input, not here. Kernels are stored Keras-style `(in, out)` and transposed
to and from PyTorch's `(out, in)` when a checkpoint is read or written, which is exact.

This file imports only keras, numpy, safetensors and the package's error and JSON helpers (no torch, no
transformers); it reads `config.json` itself.
"""

import math
import os

import keras
import numpy as np
from keras import ops
from safetensors import SafetensorError
from safetensors.numpy import load_file

from ..errors import UserError
from ..fileio import write_numpy_checkpoint
from ..jsonfile import read_json_object
from .positions import positions_from_mask

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"

ACTIVATIONS = {
    "gelu_pytorch_tanh": lambda x: ops.gelu(x, approximate=True),
    "gelu_new": lambda x: ops.gelu(x, approximate=True),
    "gelu": lambda x: ops.gelu(x, approximate=False),
    "silu": ops.silu,
    "swish": ops.silu,
    "relu": ops.relu,
}


def resolved_config(config):
    """The config.json dict with the defaults the PyTorch config fills in made explicit (a copy)."""
    config = dict(config)
    if config.get("model_type") != "moderngpt2":
        raise UserError(f"config model_type={config.get('model_type')!r} is not 'moderngpt2'; "
                        "pass a ModernGPT2 checkpoint directory")
    for field in ("vocab_size", "n_embd", "n_layer", "n_head", "num_key_value_heads", "head_dim"):
        if not isinstance(config.get(field), int):
            raise UserError(f"config field {field}={config.get(field)!r} must be an integer")
    defaults = dict(
        n_inner=4 * config["n_embd"], activation_function="gelu_pytorch_tanh", rms_norm_eps=1e-6,
        rope_theta=10000.0, query_pre_attn_scalar=config["head_dim"], attn_logit_softcapping=None,
        final_logit_softcapping=None, sliding_window=None, attention_dropout=0.0, resid_pdrop=0.0, embd_pdrop=0.0,
        initializer_range=0.02, tie_word_embeddings=True, use_per_layer_embedding=False, per_layer_vocab_size=10000,
        per_layer_hidden_size=256, per_layer_combination_method="scaled_add", per_layer_gate_activation="silu",
        per_layer_projection_dropout=0.0,
    )
    for field, value in defaults.items():
        if config.get(field) is None:
            config[field] = value
    if config.get("layer_types") is None:
        sliding = config["sliding_window"] is not None
        config["layer_types"] = ["sliding_attention" if sliding and i % 2 == 0 else "full_attention"
                                 for i in range(config["n_layer"])]
    for field in ("activation_function", "per_layer_gate_activation"):
        if config[field] not in ACTIVATIONS:
            raise UserError(f"config {field}={config[field]!r} is not supported by the Keras model; "
                            f"use one of {', '.join(ACTIVATIONS)}")
    return config


def scaled(tensor, scale):
    # The scale is rounded to the activation dtype first, as Gemma2/Gemma3n do (sqrt(768) becomes 27.75 in bf16).
    return tensor * ops.cast(scale, tensor.dtype)


def softcap(logits, cap):
    """`cap * tanh(logits / cap)`: bounds logits smoothly to (-cap, cap)."""
    return cap * ops.tanh(logits / cap)


def normal(std):
    return keras.initializers.RandomNormal(mean=0.0, stddev=std)


class Linear(keras.layers.Layer):
    """A bias-free dense map; `weight` is `(in, out)` and is PyTorch's `weight.T`."""

    def __init__(self, in_features, out_features, std, **kwargs):
        super().__init__(**kwargs)
        self.weight = self.add_weight(shape=(in_features, out_features), initializer=normal(std), name="weight")

    def call(self, x):
        return ops.matmul(x, self.weight)

    def named_variables(self):
        return {"weight": (self.weight, True)}


class RMSNorm(keras.layers.Layer):
    """RMSNorm computed in float32 with a `(1 + w)` gain, `w` initialised to 0 (Gemma2)."""

    def __init__(self, dim, eps, **kwargs):
        super().__init__(**kwargs)
        self.eps = eps
        self.weight = self.add_weight(shape=(dim,), initializer="zeros", name="weight")

    def call(self, x):
        x_up = ops.cast(x, "float32")
        normed = x_up * ops.rsqrt(ops.mean(ops.square(x_up), axis=-1, keepdims=True) + self.eps)
        return ops.cast(normed * (1.0 + ops.cast(self.weight, "float32")), x.dtype)

    def named_variables(self):
        return {"weight": (self.weight, False)}


def rotary_inverse_frequencies(head_dim, base):
    """(D/2,) float32, computed as the PyTorch model does (float32 exponents, then the power)."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    return (1.0 / (np.float32(base) ** exponents)).astype(np.float32)


def rotary_cos_sin(position_ids, inv_freq, dtype):
    """position_ids (B, S) -> cos, sin (B, 1, S, D) for rotate-half RoPE; no table, any position works."""
    freqs = ops.cast(position_ids, "float32")[..., None] * inv_freq  # (B, S, D/2)
    emb = ops.concatenate([freqs, freqs], axis=-1)[:, None]  # (B, 1, S, D)
    return ops.cast(ops.cos(emb), dtype), ops.cast(ops.sin(emb), dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return ops.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def attention_masks(layer_types, sliding_window, query_slots, key_valid):
    """{layer type: bool (B, 1, Q, K)}: a query at slot q sees key slot k when k <= q, within the window, and the
    key is not padding; a padded query still sees itself so no row is empty (as `AttentionMask.dense` in PyTorch).

    query_slots (Q,) int32 cache slots of the queries; key_valid (B, K) bool over the key slots 0..K-1.
    """
    q = query_slots[:, None]
    k = ops.arange(ops.shape(key_valid)[1], dtype="int32")[None, :]
    masks = {}
    for layer_type in dict.fromkeys(layer_types):
        allowed = k <= q
        if layer_type == "sliding_attention":
            allowed = ops.logical_and(allowed, q - k < sliding_window)
        allowed = ops.logical_and(allowed[None], ops.logical_or(key_valid[:, None, :], (k == q)[None]))
        masks[layer_type] = allowed[:, None]  # (B, 1, Q, K)
    return masks


class Attention(keras.layers.Layer):
    """Grouped-query attention with RoPE, Gemma2 query scaling, optional softcap and sliding window (eager math)."""

    def __init__(self, config, layer_idx, **kwargs):
        super().__init__(**kwargs)
        hidden, self.head_dim, std = config["n_embd"], config["head_dim"], config["initializer_range"]
        self.num_heads, self.num_kv_heads = config["n_head"], config["num_key_value_heads"]
        self.scaling = config["query_pre_attn_scalar"] ** -0.5
        self.attn_logit_softcapping = config["attn_logit_softcapping"]
        self.q_proj = Linear(hidden, self.num_heads * self.head_dim, std)
        self.k_proj = Linear(hidden, self.num_kv_heads * self.head_dim, std)
        self.v_proj = Linear(hidden, self.num_kv_heads * self.head_dim, std)
        self.o_proj = Linear(self.num_heads * self.head_dim, hidden, std / math.sqrt(2 * config["n_layer"]))
        self.dropout = keras.layers.Dropout(config["attention_dropout"])

    def heads(self, projected, batch, length):
        return ops.transpose(ops.reshape(projected, (batch, length, -1, self.head_dim)), (0, 2, 1, 3))

    def call(self, hidden_states, cos, sin, mask, cache=None, start=None, training=False):
        """cache: (key, value) of (B, Hkv, T, D) to write this forward's keys into at slot `start`, then read."""
        batch, length = ops.shape(hidden_states)[0], ops.shape(hidden_states)[1]
        query = self.heads(self.q_proj(hidden_states), batch, length)  # (B, Hq, S, D)
        key = self.heads(self.k_proj(hidden_states), batch, length)  # (B, Hkv, S, D)
        value = self.heads(self.v_proj(hidden_states), batch, length)
        query, key = query * cos + rotate_half(query) * sin, key * cos + rotate_half(key) * sin
        if cache is not None:
            key = ops.slice_update(cache[0], (0, 0, start, 0), key)  # (B, Hkv, T, D)
            value = ops.slice_update(cache[1], (0, 0, start, 0), value)
            cache = (key, value)
        n_rep = self.num_heads // self.num_kv_heads
        scores = ops.matmul(query, ops.transpose(ops.repeat(key, n_rep, axis=1), (0, 1, 3, 2))) * self.scaling
        if self.attn_logit_softcapping is not None:
            scores = softcap(scores, self.attn_logit_softcapping)
        # Masked in float32, where the softmax runs: the fill is the float32 minimum whatever the compute dtype.
        scores = ops.where(mask, ops.cast(scores, "float32"), np.finfo(np.float32).min)
        weights = ops.cast(ops.softmax(scores, axis=-1), query.dtype)
        weights = self.dropout(weights, training=training)
        output = ops.matmul(weights, ops.repeat(value, n_rep, axis=1))  # (B, Hq, S, D)
        output = ops.reshape(ops.transpose(output, (0, 2, 1, 3)), (batch, length, -1))
        return self.o_proj(output), cache


class MLP(keras.layers.Layer):
    """Gated MLP: down(act(gate(x)) * up(x)); GeGLU with the default activation."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        hidden, inner, std = config["n_embd"], config["n_inner"], config["initializer_range"]
        self.gate_proj = Linear(hidden, inner, std)
        self.up_proj = Linear(hidden, inner, std)
        self.down_proj = Linear(inner, hidden, std / math.sqrt(2 * config["n_layer"]))
        self.act_fn = ACTIVATIONS[config["activation_function"]]

    def call(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class PerLayerGate(keras.layers.Layer):
    """h <- h + RMSNorm_H(W_up(act(W_gate h) * p_i)): injects layer i's per-layer input into the residual stream."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        hidden, d, std = config["n_embd"], config["per_layer_hidden_size"], config["initializer_range"]
        self.gate_proj = Linear(hidden, d, std)
        self.up_proj = Linear(d, hidden, std)
        self.norm = RMSNorm(hidden, config["rms_norm_eps"])
        self.act_fn = ACTIVATIONS[config["per_layer_gate_activation"]]
        self.dropout = keras.layers.Dropout(config["per_layer_projection_dropout"])

    def call(self, hidden_states, per_layer_input, training=False):
        gated = self.act_fn(self.gate_proj(hidden_states)) * self.dropout(per_layer_input, training=training)
        return hidden_states + self.norm(self.up_proj(gated))


class DecoderLayer(keras.layers.Layer):
    """Sandwich-norm block: h = x + norm(attn(norm(x))); out = h + norm(mlp(norm(h))); PLE gate first if enabled."""

    def __init__(self, config, layer_idx, **kwargs):
        super().__init__(**kwargs)
        hidden, eps = config["n_embd"], config["rms_norm_eps"]
        self.attention_type = config["layer_types"][layer_idx]
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(hidden, eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps)
        self.pre_feedforward_layernorm = RMSNorm(hidden, eps)
        self.post_feedforward_layernorm = RMSNorm(hidden, eps)
        self.resid_dropout = keras.layers.Dropout(config["resid_pdrop"])
        self.per_layer_gate = PerLayerGate(config) if config["use_per_layer_embedding"] else None

    def call(self, hidden_states, per_layer_input, cos, sin, masks, cache=None, start=None, training=False):
        if self.per_layer_gate is not None:
            hidden_states = self.per_layer_gate(hidden_states, per_layer_input, training=training)
        attn_out, cache = self.self_attn(self.input_layernorm(hidden_states), cos, sin, masks[self.attention_type],
                                         cache=cache, start=start, training=training)
        hidden_states = hidden_states + self.resid_dropout(self.post_attention_layernorm(attn_out), training=training)
        mlp_out = self.mlp(self.pre_feedforward_layernorm(hidden_states))
        hidden_states = hidden_states + self.resid_dropout(self.post_feedforward_layernorm(mlp_out), training=training)
        return hidden_states, cache


class PerLayerInputs(keras.layers.Layer):
    """Gemma3n-style per-layer embeddings combined with a projection of the main embeddings, (B, S, L, d).

    Holds the `V_p x (L * d)` table (scaled by sqrt(d)), the projection `W x_emb * H^-0.5` normed per layer, the
    combination (`scaled_add`, `concat` or `gated`) and the stored main-id -> per-layer-id token map.
    """

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size, self.num_layers = config["n_embd"], config["n_layer"]
        self.d = d = config["per_layer_hidden_size"]
        self.method = config["per_layer_combination_method"]
        std = config["initializer_range"]
        self.table = self.add_weight(shape=(config["per_layer_vocab_size"], self.num_layers * d),
                                     initializer=normal(std), name="embed_tokens_per_layer")
        ids = np.arange(config["vocab_size"])
        default_map = np.where(ids < config["per_layer_vocab_size"], ids, 0)  # Gemma3n's rule
        self.token_map = self.add_weight(shape=(config["vocab_size"],), dtype="int32", trainable=False,
                                         initializer=keras.initializers.Constant(default_map), name="token_map")
        self.proj = Linear(self.hidden_size, self.num_layers * d, std)
        self.norm = RMSNorm(d, config["rms_norm_eps"])
        if self.method == "concat":
            start = np.concatenate([np.eye(d), np.eye(d)]) * 2.0**-0.5  # starts exactly where scaled_add is
            start = np.stack([start] * self.num_layers)
            self.combine_weight = self.add_weight(shape=(self.num_layers, 2 * d, d), name="combine_weight",
                                                  initializer=keras.initializers.Constant(start))
        elif self.method == "gated":
            self.gate_logits = self.add_weight(shape=(self.num_layers, d), initializer="zeros", name="gate_logits")

    def call(self, input_ids, inputs_embeds):
        batch, length = ops.shape(input_ids)[0], ops.shape(input_ids)[1]
        per_layer_ids = ops.take(self.token_map, input_ids, axis=0)
        embeds = scaled(ops.take(self.table, per_layer_ids, axis=0), self.d**0.5)
        embeds = ops.reshape(embeds, (batch, length, self.num_layers, self.d))
        projected = scaled(self.proj(inputs_embeds), self.hidden_size**-0.5)
        projected = self.norm(ops.reshape(projected, (batch, length, self.num_layers, self.d)))
        if self.method == "scaled_add":
            return scaled(projected + embeds, 2.0**-0.5)
        if self.method == "concat":
            both = ops.concatenate([projected, embeds], axis=-1)  # (B, S, L, 2d)
            return ops.einsum("bsle,led->bsld", both, ops.cast(self.combine_weight, both.dtype))
        mix = ops.cast(ops.sigmoid(self.gate_logits), projected.dtype)  # (L, d)
        return mix * projected + (1.0 - mix) * embeds

    def named_variables(self):
        found = {
            "embed_tokens_per_layer.weight": (self.table, False),
            "per_layer_token_map": (self.token_map, False),
            "per_layer_projection.proj.weight": (self.proj.weight, True),
            "per_layer_projection.norm.weight": (self.norm.weight, False),
        }
        if self.method == "concat":
            found["per_layer_projection.combine_weight"] = (self.combine_weight, False)
        elif self.method == "gated":
            found["per_layer_projection.gate_logits"] = (self.gate_logits, False)
        return found


class ModernGPT2Model(keras.layers.Layer):
    """The decoder stack: scaled token embeddings, per-layer inputs, decoder layers, final norm."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        hidden = config["n_embd"]
        self.embed_tokens = self.add_weight(shape=(config["vocab_size"], hidden), name="embed_tokens",
                                            initializer=normal(config["initializer_range"]))
        self.embed_dropout = keras.layers.Dropout(config["embd_pdrop"])
        self.decoder_layers = [DecoderLayer(config, i) for i in range(config["n_layer"])]
        self.norm = RMSNorm(hidden, config["rms_norm_eps"])
        self.per_layer_inputs = PerLayerInputs(config) if config["use_per_layer_embedding"] else None
        self.inv_freq = rotary_inverse_frequencies(config["head_dim"], config["rope_theta"])

    def call(self, input_ids, position_ids, key_valid, caches=None, start=0, training=False):
        """input_ids, position_ids (B, S); key_valid (B, K) over the key slots; with `caches` (one (key, value)
        per layer, each (B, Hkv, K, D)) this forward's keys are written at slot `start` and the updated caches
        returned. Returns (hidden states (B, S, H), caches or None)."""
        inputs_embeds = scaled(ops.take(self.embed_tokens, input_ids, axis=0), self.config["n_embd"] ** 0.5)
        per_layer = None if self.per_layer_inputs is None else self.per_layer_inputs(input_ids, inputs_embeds)
        query_slots = ops.arange(ops.shape(input_ids)[1], dtype="int32") + ops.cast(start, "int32")
        masks = attention_masks(self.config["layer_types"], self.config["sliding_window"], query_slots, key_valid)
        cos, sin = rotary_cos_sin(position_ids, self.inv_freq, inputs_embeds.dtype)
        hidden_states = self.embed_dropout(inputs_embeds, training=training)
        new_caches = [] if caches is not None else None
        for i, layer in enumerate(self.decoder_layers):
            hidden_states, cache = layer(hidden_states, None if per_layer is None else per_layer[:, :, i, :], cos,
                                         sin, masks, cache=None if caches is None else caches[i], start=start,
                                         training=training)
            if caches is not None:
                new_caches.append(cache)
        return self.norm(hidden_states), new_caches

    def named_variables(self):
        found = {"embed_tokens.weight": (self.embed_tokens, False), "norm.weight": (self.norm.weight, False)}
        for i, layer in enumerate(self.decoder_layers):
            found.update({f"layers.{i}.{name}": value for name, value in checkpoint_variables(layer).items()})
        if self.per_layer_inputs is not None:
            found.update(self.per_layer_inputs.named_variables())
        return found


def checkpoint_variables(layer):
    """{PyTorch state-dict name: (variable, transposed)} below a layer whose sub-layer attributes carry PyTorch's
    module names (`self_attn.q_proj`, `mlp.down_proj`, ...); leaves say their own names with `named_variables`."""
    if hasattr(layer, "named_variables"):
        return layer.named_variables()
    found = {}
    for name, child in vars(layer).items():
        if isinstance(child, keras.layers.Layer) and not name.startswith("_"):
            found.update({f"{name}.{key}": value for key, value in checkpoint_variables(child).items()})
    return found


class ModernGPT2ForCausalLM(keras.Model):
    """The decoder with a language-model head (tied to the token embeddings unless `tie_word_embeddings` is false).

    `model(input_ids)` or `model({"input_ids": ..., "attention_mask": ...})` returns softcapped logits (B, S, V),
    so `fit` with `causal_lm_loss` trains it. Build one from a config dict (`ModernGPT2ForCausalLM(config)`,
    random init like PyTorch's) or load a checkpoint with `from_pretrained`.
    """

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.config = resolved_config(config)  # config.json with every default filled in
        self.model = ModernGPT2Model(self.config)
        self.lm_head = None
        if not self.config["tie_word_embeddings"]:
            self.lm_head = Linear(self.config["n_embd"], self.config["vocab_size"],
                                  self.config["initializer_range"])

    def call(self, inputs, training=False):
        if isinstance(inputs, dict):
            input_ids, attention_mask = inputs["input_ids"], inputs.get("attention_mask")
        else:
            input_ids, attention_mask = inputs, None
        if attention_mask is None:
            position_ids = ops.broadcast_to(ops.arange(ops.shape(input_ids)[1], dtype="int32")[None],
                                            ops.shape(input_ids))
            key_valid = ops.ones(ops.shape(input_ids), dtype="bool")
        else:
            position_ids, key_valid = positions_from_mask(attention_mask), ops.cast(attention_mask, "bool")
        hidden_states, _ = self.model(input_ids, position_ids, key_valid, training=training)
        return self.compute_logits(hidden_states)

    def compute_logits(self, hidden_states):
        """LM head then the final softcap."""
        if self.lm_head is None:
            logits = ops.matmul(hidden_states, ops.transpose(self.model.embed_tokens))
        else:
            logits = self.lm_head(hidden_states)
        if self.config["final_logit_softcapping"] is not None:
            logits = softcap(logits, self.config["final_logit_softcapping"])
        return logits

    def named_variables(self):
        """{PyTorch state-dict name: (variable, stored transposed)}: the checkpoint layout of this model."""
        found = {f"model.{name}": value for name, value in self.model.named_variables().items()}
        if self.lm_head is not None:
            found["lm_head.weight"] = (self.lm_head.weight, True)
        return found

    # ------------------------------------------------------------------------------------------ checkpoints

    @classmethod
    def from_pretrained(cls, path):
        """Load config.json and the safetensors weights (single file or sharded) of a checkpoint directory."""
        model = cls(read_config(path))
        model.load_weights_from(read_tensors(path))
        return model

    def load_weights_from(self, tensors):
        """Assign PyTorch-named numpy tensors; every variable must be present with its shape."""
        expected = self.named_variables()
        unexpected = sorted(set(tensors) - set(expected) - {"lm_head.weight"})
        missing = sorted(set(expected) - set(tensors))
        if missing or unexpected:
            raise UserError(f"checkpoint does not match its config.json: missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]}")
        for name, (variable, transposed) in expected.items():
            value = tensors[name].T if transposed else tensors[name]
            if tuple(value.shape) != tuple(variable.shape):
                raise UserError(f"checkpoint tensor {name} has shape {tensors[name].shape}, the config needs "
                                f"{tuple(variable.shape)[::-1] if transposed else tuple(variable.shape)}")
            variable.assign(value.astype(variable.dtype))

    def save_pretrained(self, path):
        """Write config.json and model.safetensors that PyTorch `AutoModelForCausalLM` loads (after
        `import moderngpt2`); kernels go back to PyTorch's `(out, in)` layout, the token map to int64."""
        tensors = {}
        for name, (variable, transposed) in self.named_variables().items():
            value = variable.numpy()
            if name.endswith("per_layer_token_map"):
                value = value.astype(np.int64)
            tensors[name] = np.ascontiguousarray(value.T if transposed else value)
        write_numpy_checkpoint(path, self.config, tensors)

    # ------------------------------------------------------------------------------------------ inference

    def token_nll(self, input_ids, attention_mask=None):
        """(B, S-1) float32: -log p(input_ids[:, t+1] | input_ids[:, :t+1]) after the final softcap; 0 where the
        target is padding."""
        input_ids = np.asarray(input_ids)
        inputs = {"input_ids": input_ids.astype(np.int32)}
        if attention_mask is not None:
            inputs["attention_mask"] = np.asarray(attention_mask).astype(np.int32)
        logits = ops.cast(self(inputs)[:, :-1], "float32")
        targets = input_ids[:, 1:].astype(np.int32)
        log_probs = ops.log_softmax(logits, axis=-1)
        nll = -ops.convert_to_numpy(ops.take_along_axis(log_probs, targets[..., None], axis=-1))[..., 0]
        if attention_mask is not None:
            nll = np.where(np.asarray(attention_mask)[:, 1:] != 0, nll, 0.0)
        return nll.astype(np.float32)

    def generate(self, input_ids, attention_mask=None, *, max_new_tokens=20, do_sample=False, temperature=1.0,
                 top_k=0, top_p=1.0, seed=0, eos_token_id=None, pad_token_id=None):
        """Prompt plus `max_new_tokens` tokens, int64 (B, S + max_new_tokens); see `moderngpt2.tf.generation`."""
        from .generation import generate

        return generate(self, input_ids, attention_mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
                        temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, eos_token_id=eos_token_id,
                        pad_token_id=pad_token_id)


def read_config(path):
    """config.json of a checkpoint directory as a dict."""
    config_path = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise UserError(f"{path}: no {CONFIG_NAME} — pass a checkpoint directory written by save_pretrained")
    return read_json_object(config_path, "model config")


def read_tensors(path):
    """{name: numpy array} from model.safetensors, or from the shards listed in model.safetensors.index.json."""
    index_path = os.path.join(path, WEIGHTS_INDEX_NAME)
    if os.path.isfile(index_path):
        weight_map = read_json_object(index_path, "safetensors index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise UserError(f"{index_path}: no weight_map — the index of a sharded checkpoint lists its files there")
        files = sorted(set(weight_map.values()))
    elif os.path.isfile(os.path.join(path, WEIGHTS_NAME)):
        files = [WEIGHTS_NAME]
    else:
        raise UserError(f"{path}: no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} — save the checkpoint with "
                        "safetensors (save_pretrained does)")
    tensors = {}
    for name in files:
        try:
            tensors.update(load_file(os.path.join(path, name)))
        except (SafetensorError, OSError, TypeError) as error:
            raise UserError(f"{os.path.join(path, name)}: cannot read it ({error})") from None
    return tensors
