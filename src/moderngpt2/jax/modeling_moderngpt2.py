"""ModernGPT2 in JAX on Flax NNX: the same model, checkpoint and numbers as the PyTorch implementation.

Module and parameter names follow the PyTorch model (`model.layers.{i}.self_attn.q_proj`, ...), so a checkpoint's
safetensors names map 1:1 onto this module tree: a Linear's `kernel` is the transposed PyTorch `weight`, an
embedding's `embedding` is its `weight`. This file imports only jax, flax, numpy and safetensors, so it runs
without torch or transformers installed.

Dropout is not implemented: the JAX model computes the deterministic (evaluation) function; the dropout fields of
the config (all 0 by default) are ignored.
"""

import functools
import json
import os
import weakref

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file

from ..fileio import write_numpy_checkpoint

# ------------------------------------------------------------------------------------------------ configuration

# The preset shapes and field defaults of `ModernGPT2Config`, restated because this file cannot import
# transformers; transformers writes only the fields that differ from these defaults into config.json.
MODEL_SIZE_PRESETS = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=4, num_key_value_heads=2, head_dim=16, n_positions=128),
    "small": dict(n_layer=12, n_embd=768, n_head=12, num_key_value_heads=4, head_dim=64, n_positions=1024),
    "medium": dict(n_layer=24, n_embd=1024, n_head=16, num_key_value_heads=4, head_dim=64, n_positions=1024),
    "large": dict(n_layer=36, n_embd=1280, n_head=20, num_key_value_heads=4, head_dim=64, n_positions=1024),
    "xl": dict(n_layer=48, n_embd=1600, n_head=25, num_key_value_heads=5, head_dim=64, n_positions=1024),
}
CONFIG_DEFAULTS = dict(
    model_size_name=None, vocab_size=32000, n_inner=None, activation_function="gelu_pytorch_tanh", rms_norm_eps=1e-6,
    rope_theta=10000.0, query_pre_attn_scalar=None, attn_logit_softcapping=None, final_logit_softcapping=None,
    sliding_window=None, layer_types=None, tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
    pad_token_id=None, use_per_layer_embedding=False, per_layer_vocab_size=10000, per_layer_hidden_size=256,
    per_layer_combination_method="scaled_add", per_layer_gate_activation="silu",
)
ALIASES = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
           "max_position_embeddings": "n_positions", "intermediate_size": "n_inner"}
ACTIVATIONS = {
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "relu": jax.nn.relu,
}


def resolve_config(raw):
    """config.json's dict -> every field filled in the way `ModernGPT2Config.__init__` fills it."""
    config = dict(raw)
    for alias, field in ALIASES.items():
        if alias in config:
            config.setdefault(field, config.pop(alias))
    for name, default in CONFIG_DEFAULTS.items():
        config.setdefault(name, default)
    preset = config["model_size_name"]
    if preset is not None and preset not in MODEL_SIZE_PRESETS:
        raise ValueError(f"model_size_name={preset!r} is not a preset; choose one of {', '.join(MODEL_SIZE_PRESETS)}")
    for name, value in MODEL_SIZE_PRESETS[preset or "small"].items():
        if config.get(name) is None:
            config[name] = value
    if config["n_inner"] is None:
        config["n_inner"] = 4 * config["n_embd"]
    if config["query_pre_attn_scalar"] is None:
        config["query_pre_attn_scalar"] = config["head_dim"]
    if config["layer_types"] is None:
        windowed = config["sliding_window"] is not None
        config["layer_types"] = ["sliding_attention" if windowed and i % 2 == 0 else "full_attention"
                                 for i in range(config["n_layer"])]
    for name in ("activation_function", "per_layer_gate_activation"):
        if config[name] not in ACTIVATIONS:
            raise ValueError(f"{name}={config[name]!r} has no JAX implementation; use one of {', '.join(ACTIVATIONS)}")
    return config


# --------------------------------------------------------------------------------------------------- layers


def upcast(x):
    """At least float32 (float64 stays float64): where norms, softmax and the loss are computed."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def scaled(x, scale):
    # The scale is rounded to the activation dtype first, as Gemma2/Gemma3n do (sqrt(768) becomes 27.75 in bf16).
    return x * jnp.asarray(scale, dtype=x.dtype)


def softcap(x, cap):
    """`cap * tanh(x / cap)`: bounds x smoothly to (-cap, cap)."""
    return cap * jnp.tanh(x / cap)


def linear(in_features, out_features, rngs, std=0.02):
    return nnx.Linear(in_features, out_features, use_bias=False, rngs=rngs,
                      kernel_init=nnx.initializers.normal(std))


class Buffer(nnx.Variable):
    """A stored, non-trained array (the per-layer token map)."""


class ModernGPT2RMSNorm(nnx.Module):
    """RMSNorm computed in float32 with a `(1 + w)` gain, `w` initialised to 0 (Gemma2)."""

    def __init__(self, dim, eps=1e-6):
        self.eps = eps
        self.weight = nnx.Param(jnp.zeros((dim,), jnp.float32))

    def __call__(self, x):
        x_up = upcast(x)
        normed = x_up * jax.lax.rsqrt(jnp.mean(x_up * x_up, axis=-1, keepdims=True) + self.eps)
        return (normed * (1.0 + upcast(self.weight[...]))).astype(x.dtype)


def rotary_embedding(position_ids, head_dim, base, dtype):
    """RoPE cos/sin `(B, S, D)` for the given positions, computed without a table (any position works)."""
    inv_freq = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))  # (D/2,)
    freqs = position_ids[..., None].astype(jnp.float32) * inv_freq  # (B, S, D/2)
    emb = jnp.concatenate((freqs, freqs), axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return jnp.concatenate((-x[..., half:], x[..., :half]), axis=-1)


def attention_mask(query_slots, key_slots, key_valid, sliding_window):
    """Boolean `(B or 1, 1, Q, K)`: a query sees earlier keys (within the window) that are not padding.

    A padded query still sees itself, so no row is fully masked; its output is never read.
    """
    q, k = query_slots[:, None], key_slots[None, :]
    allowed = k <= q
    if sliding_window is not None:
        allowed = allowed & (q - k < sliding_window)
    if key_valid is None:
        return allowed[None, None]
    return (allowed[None] & (key_valid[:, None, :] | (k == q)[None]))[:, None]


class ModernGPT2MLP(nnx.Module):
    """Gated MLP: down(act(gate(x)) * up(x)); GeGLU with the default activation."""

    def __init__(self, config, rngs, residual_std):
        self.gate_proj = linear(config["n_embd"], config["n_inner"], rngs)
        self.up_proj = linear(config["n_embd"], config["n_inner"], rngs)
        self.down_proj = linear(config["n_inner"], config["n_embd"], rngs, residual_std)
        self.act_fn = ACTIVATIONS[config["activation_function"]]

    def __call__(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class ModernGPT2Attention(nnx.Module):
    """Grouped-query attention with RoPE, Gemma2 query scaling, optional softcap and sliding window."""

    def __init__(self, config, layer_idx, rngs, residual_std):
        self.head_dim = config["head_dim"]
        self.scaling = config["query_pre_attn_scalar"] ** -0.5
        self.attn_logit_softcapping = config["attn_logit_softcapping"]
        hidden, q_width, kv_width = config["n_embd"], config["n_head"] * self.head_dim, \
            config["num_key_value_heads"] * self.head_dim
        self.q_proj = linear(hidden, q_width, rngs)
        self.k_proj = linear(hidden, kv_width, rngs)
        self.v_proj = linear(hidden, kv_width, rngs)
        self.o_proj = linear(q_width, hidden, rngs, residual_std)

    def __call__(self, x, cos, sin, mask, cache=None, cache_index=0):
        """x (B, S, H); cache: this layer's (key, value) buffers (B, Hkv, T, D), written at slot `cache_index`."""
        batch, length = x.shape[:2]

        def heads(projected):  # (B, S, n*D) -> (B, n, S, D)
            return projected.reshape(batch, length, -1, self.head_dim).transpose(0, 2, 1, 3)

        query, key, value = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, S, D)
        query = query * cos + rotate_half(query) * sin
        key = key * cos + rotate_half(key) * sin
        if cache is not None:
            start = (0, 0, cache_index, 0)
            cache = (jax.lax.dynamic_update_slice(cache[0], key.astype(cache[0].dtype), start),
                     jax.lax.dynamic_update_slice(cache[1], value.astype(cache[1].dtype), start))
            key, value = cache  # (B, Hkv, T, D)
        n_rep = query.shape[1] // key.shape[1]
        key, value = jnp.repeat(key, n_rep, axis=1), jnp.repeat(value, n_rep, axis=1)
        scores = jnp.einsum("bhqd,bhkd->bhqk", query, key) * self.scaling
        if self.attn_logit_softcapping is not None:
            scores = softcap(scores, self.attn_logit_softcapping)
        scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(upcast(scores), axis=-1).astype(query.dtype)
        output = jnp.einsum("bhqk,bhkd->bqhd", weights, value).reshape(batch, length, -1)
        return self.o_proj(output), cache


class PerLayerProjection(nnx.Module):
    """Projects the main embeddings to one d-wide input per layer and combines it with the per-layer embeddings.

    `scaled_add`: (P + E) * 2^-0.5; `concat`: a per-layer linear 2d -> d on [P; E]; `gated`: sigmoid(g) * P +
    (1 - sigmoid(g)) * E with learned per-layer, per-channel logits g (see the PyTorch model).
    """

    def __init__(self, config, rngs):
        self.num_layers, self.hidden_size = config["n_layer"], config["n_embd"]
        d = config["per_layer_hidden_size"]
        self.combination_method = config["per_layer_combination_method"]
        self.proj = linear(self.hidden_size, self.num_layers * d, rngs)
        self.norm = ModernGPT2RMSNorm(d, eps=config["rms_norm_eps"])
        if self.combination_method == "concat":
            # [I; I] * 2^-0.5 starts exactly where `scaled_add` is.
            eye = jnp.eye(d, dtype=jnp.float32) * 2.0**-0.5
            self.combine_weight = nnx.Param(jnp.tile(jnp.concatenate((eye, eye))[None], (self.num_layers, 1, 1)))
        elif self.combination_method == "gated":
            self.gate_logits = nnx.Param(jnp.zeros((self.num_layers, d), jnp.float32))

    def __call__(self, inputs_embeds, per_layer_embeds):
        projected = scaled(self.proj(inputs_embeds), self.hidden_size**-0.5)
        projected = self.norm(projected.reshape(*inputs_embeds.shape[:-1], self.num_layers, -1))  # (B, S, L, d)
        if self.combination_method == "scaled_add":
            return scaled(projected + per_layer_embeds, 2.0**-0.5)
        if self.combination_method == "concat":
            both = jnp.concatenate((projected, per_layer_embeds), axis=-1)  # (B, S, L, 2d)
            return jnp.einsum("bsle,led->bsld", both, self.combine_weight[...].astype(both.dtype))
        mix = jax.nn.sigmoid(self.gate_logits[...]).astype(projected.dtype)  # (L, d)
        return mix * projected + (1.0 - mix) * per_layer_embeds


class PerLayerGate(nnx.Module):
    """h <- h + RMSNorm_H(W_up(act(W_gate h) * p_i)): injects layer i's per-layer input into the residual stream."""

    def __init__(self, config, rngs):
        self.gate_proj = linear(config["n_embd"], config["per_layer_hidden_size"], rngs)
        self.up_proj = linear(config["per_layer_hidden_size"], config["n_embd"], rngs)
        self.norm = ModernGPT2RMSNorm(config["n_embd"], eps=config["rms_norm_eps"])
        self.act_fn = ACTIVATIONS[config["per_layer_gate_activation"]]

    def __call__(self, hidden_states, per_layer_input):
        return hidden_states + self.norm(self.up_proj(self.act_fn(self.gate_proj(hidden_states)) * per_layer_input))


class ModernGPT2DecoderLayer(nnx.Module):
    """Sandwich-norm block: h = x + norm(attn(norm(x))); out = h + norm(mlp(norm(h))); PLE gate first if enabled."""

    def __init__(self, config, layer_idx, rngs):
        residual_std = 0.02 / (2 * config["n_layer"]) ** 0.5
        self.attention_type = config["layer_types"][layer_idx]
        self.self_attn = ModernGPT2Attention(config, layer_idx, rngs, residual_std)
        self.mlp = ModernGPT2MLP(config, rngs, residual_std)
        eps, hidden = config["rms_norm_eps"], config["n_embd"]
        self.input_layernorm = ModernGPT2RMSNorm(hidden, eps)
        self.post_attention_layernorm = ModernGPT2RMSNorm(hidden, eps)
        self.pre_feedforward_layernorm = ModernGPT2RMSNorm(hidden, eps)
        self.post_feedforward_layernorm = ModernGPT2RMSNorm(hidden, eps)
        self.per_layer_gate = PerLayerGate(config, rngs) if config["use_per_layer_embedding"] else None

    def __call__(self, hidden_states, per_layer_input, cos, sin, mask, cache=None, cache_index=0):
        if self.per_layer_gate is not None:
            hidden_states = self.per_layer_gate(hidden_states, per_layer_input)
        attended, cache = self.self_attn(self.input_layernorm(hidden_states), cos, sin, mask, cache, cache_index)
        hidden_states = hidden_states + self.post_attention_layernorm(attended)
        mlp_out = self.mlp(self.pre_feedforward_layernorm(hidden_states))
        return hidden_states + self.post_feedforward_layernorm(mlp_out), cache


class ModernGPT2Model(nnx.Module):
    """Embeddings (plus per-layer embeddings), the decoder layers and the final norm."""

    def __init__(self, config, rngs):
        self.config = config
        hidden, std = config["n_embd"], 0.02
        self.embed_tokens = nnx.Embed(config["vocab_size"], hidden, rngs=rngs,
                                      embedding_init=nnx.initializers.normal(std))
        self.layers = nnx.List([ModernGPT2DecoderLayer(config, i, rngs) for i in range(config["n_layer"])])
        self.norm = ModernGPT2RMSNorm(hidden, eps=config["rms_norm_eps"])
        if config["use_per_layer_embedding"]:
            layers, d = config["n_layer"], config["per_layer_hidden_size"]
            self.embed_tokens_per_layer = nnx.Embed(config["per_layer_vocab_size"], layers * d, rngs=rngs,
                                                    embedding_init=nnx.initializers.normal(std))
            self.per_layer_projection = PerLayerProjection(config, rngs)
            # main id -> per-layer id (Gemma3n's rule until a checkpoint's own map is loaded)
            main_ids = jnp.arange(config["vocab_size"], dtype=jnp.int32)
            self.per_layer_token_map = Buffer(jnp.where(main_ids < config["per_layer_vocab_size"], main_ids, 0))

    def per_layer_inputs(self, input_ids, inputs_embeds):
        """(B, S, L, d): the per-layer inputs of the tokens, through the stored token map."""
        config = self.config
        per_layer_ids = self.per_layer_token_map[...][input_ids]
        embeds = scaled(self.embed_tokens_per_layer(per_layer_ids), config["per_layer_hidden_size"] ** 0.5)
        embeds = embeds.reshape(*input_ids.shape, config["n_layer"], config["per_layer_hidden_size"])
        return self.per_layer_projection(inputs_embeds, embeds)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, cache=None, cache_index=0):
        """Last hidden states (B, S, H) and the updated cache.

        attention_mask: (B, K) with 1 for tokens and 0 for padding over the keys: the S inputs without a cache,
        the T slots of the cache buffers with one. cache: one (key, value) pair of (B, Hkv, T, D) per layer;
        the inputs are written at slots cache_index ... cache_index + S - 1.
        """
        config = self.config
        length = input_ids.shape[1]
        inputs_embeds = self.embed_tokens(input_ids)
        inputs_embeds = scaled(inputs_embeds, config["n_embd"] ** 0.5)
        query_slots = jnp.arange(length) + cache_index
        key_slots = query_slots if cache is None else jnp.arange(cache[0][0].shape[2])
        if position_ids is None:
            position_ids = query_slots[None]
        key_valid = None if attention_mask is None else attention_mask.astype(bool)
        masks = {kind: attention_mask_for(kind, query_slots, key_slots, key_valid, config)
                 for kind in dict.fromkeys(config["layer_types"])}
        cos, sin = rotary_embedding(position_ids, config["head_dim"], config["rope_theta"], inputs_embeds.dtype)
        per_layer = self.per_layer_inputs(input_ids, inputs_embeds) if config["use_per_layer_embedding"] else None

        hidden_states, new_cache = inputs_embeds, []
        for i, layer in enumerate(self.layers):
            hidden_states, layer_cache = layer(
                hidden_states, None if per_layer is None else per_layer[:, :, i], cos, sin,
                masks[layer.attention_type], None if cache is None else cache[i], cache_index,
            )
            new_cache.append(layer_cache)
        return self.norm(hidden_states), None if cache is None else tuple(new_cache)


def attention_mask_for(kind, query_slots, key_slots, key_valid, config):
    window = config["sliding_window"] if kind == "sliding_attention" else None
    return attention_mask(query_slots, key_slots, key_valid, window)


class ModernGPT2ForCausalLM(nnx.Module):
    """The base model and the LM head (tied to the token embeddings unless `tie_word_embeddings` is false)."""

    def __init__(self, config, rngs=None):
        """config: a config.json dict (fields left out take `ModernGPT2Config`'s defaults)."""
        config = resolve_config(config)
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.config = config
        self.model = ModernGPT2Model(config, rngs)
        self.lm_head = None if config["tie_word_embeddings"] else linear(config["n_embd"], config["vocab_size"], rngs)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, cache=None, cache_index=0):
        """(logits (B, S, V) after the final softcap, updated cache); arguments as `ModernGPT2Model`."""
        hidden_states, cache = self.model(input_ids, attention_mask, position_ids, cache, cache_index)
        return self.compute_logits(hidden_states), cache

    def compute_logits(self, hidden_states):
        if self.lm_head is None:
            logits = self.model.embed_tokens.attend(hidden_states)
        else:
            logits = self.lm_head(hidden_states)
        cap = self.config["final_logit_softcapping"]
        return logits if cap is None else softcap(upcast(logits), cap).astype(logits.dtype)

    def init_cache(self, batch_size, max_length, dtype=None):
        """Zeroed (key, value) buffers of a fixed size: every decode step then has the same shapes."""
        config = self.config
        dtype = self.model.embed_tokens.embedding[...].dtype if dtype is None else dtype
        shape = (batch_size, config["num_key_value_heads"], max_length, config["head_dim"])
        return tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(config["n_layer"]))

    # ---------------------------------------------------------------------------------------- checkpoints

    @classmethod
    def from_pretrained(cls, path, dtype=None):
        """Load a checkpoint directory (config.json and model.safetensors, or shards with their index)."""
        with open(os.path.join(path, "config.json"), encoding="utf-8") as handle:
            raw = json.load(handle)
        if raw.get("model_type") != "moderngpt2":
            raise ValueError(f"config.json has model_type={raw.get('model_type')!r}, not 'moderngpt2'")
        tensors = read_safetensors(path)
        abstract = nnx.eval_shape(lambda: cls(raw))
        graphdef, state = nnx.split(abstract)
        flat = dict(nnx.to_flat_state(state))
        names = {checkpoint_name(key): key for key in flat}
        missing = sorted(set(names) - set(tensors))
        if missing:
            raise ValueError(f"the checkpoint lacks {', '.join(missing[:5])}")
        for name, key in names.items():
            variable = flat[key]
            array = tensors[name].T if key[-1] == "kernel" else tensors[name]
            if array.shape != variable.shape:
                raise ValueError(f"{name} has shape {array.shape}, the config implies {variable.shape}")
            target = jnp.int32 if isinstance(variable, Buffer) else (dtype or array.dtype)
            variable.set_value(jnp.asarray(array, dtype=target))
        model = nnx.merge(graphdef, nnx.from_flat_state(flat))
        model.raw_config = raw
        return model

    def save_pretrained(self, path):
        """Write config.json and model.safetensors that PyTorch `AutoModelForCausalLM` loads (tied head left out)."""
        tensors = {}
        for key, variable in nnx.to_flat_state(nnx.state(self)):
            array = np.asarray(variable[...])
            if isinstance(variable, Buffer):
                array = array.astype(np.int64)  # PyTorch keeps token ids as int64
            tensors[checkpoint_name(key)] = np.ascontiguousarray(array.T if key[-1] == "kernel" else array)
        config = {**getattr(self, "raw_config", {}), **self.config, "model_type": "moderngpt2",
                  "architectures": ["ModernGPT2ForCausalLM"]}
        config.pop("auto_map", None)  # the remote-code files are not written next to these weights
        config["dtype"] = str(np.dtype(self.model.embed_tokens.embedding[...].dtype))
        write_numpy_checkpoint(path, config, tensors)

    # ----------------------------------------------------------------------------------------- inference

    def token_nll(self, input_ids, attention_mask=None):
        """Negative log-likelihood (B, S-1) float32 of input_ids[:, 1:] given their prefix (for perplexity)."""
        input_ids = jnp.asarray(np.asarray(input_ids), jnp.int32)
        mask = None if attention_mask is None else jnp.asarray(np.asarray(attention_mask), jnp.int32)
        structure, leaves = split_for_jit(self)
        token_nll = compiled_function(self, structure, "token_nll", _build_token_nll)
        return np.asarray(token_nll(leaves, input_ids, mask), dtype=np.float32)

    def generate(self, input_ids, attention_mask=None, *, max_new_tokens=20, do_sample=False, temperature=1.0,
                 top_k=0, top_p=1.0, seed=0, eos_token_id=None, pad_token_id=None):
        """Continue left-padded prompts (B, S) by max_new_tokens: int64 (B, S + max_new_tokens).

        One jitted step runs the prompt, then the same compiled step (one token, fixed-size cache) runs every new
        token. A row that produced `eos_token_id` continues with `pad_token_id` (or eos), as transformers does.
        """
        input_ids = np.asarray(input_ids, dtype=np.int64)
        batch, prompt_length = input_ids.shape
        mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        total = prompt_length + max_new_tokens
        key_valid = jnp.asarray(np.concatenate([mask, np.ones((batch, max_new_tokens), np.int64)], axis=1), jnp.int32)
        # positions count real tokens only (a left-padded row starts at 0), as transformers derives them
        positions = np.where(mask == 0, 1, np.cumsum(mask, axis=1) - 1)
        sampling = (bool(do_sample), float(temperature), int(top_k), float(top_p))
        pad = eos_token_id if pad_token_id is None else pad_token_id
        structure, leaves = split_for_jit(self)
        decode_step = compiled_function(self, structure, sampling, _build_decode_step)
        cache = self.init_cache(batch, total)
        rng = jax.random.PRNGKey(seed)
        tokens, step_positions = input_ids, positions
        finished = np.zeros(batch, dtype=bool)
        output = np.empty((batch, total), dtype=np.int64)
        output[:, :prompt_length] = input_ids
        for index in range(max_new_tokens):
            rng, step_rng = jax.random.split(rng)
            slot = prompt_length + index - tokens.shape[1]
            next_tokens, cache = decode_step(leaves, cache, jnp.asarray(tokens, jnp.int32),
                                             jnp.asarray(step_positions, jnp.int32), key_valid,
                                             jnp.asarray(slot, jnp.int32), step_rng)
            next_tokens = np.asarray(next_tokens, dtype=np.int64)
            if eos_token_id is not None:
                next_tokens = np.where(finished, pad, next_tokens)
                finished |= next_tokens == eos_token_id
            output[:, prompt_length + index] = next_tokens
            if eos_token_id is not None and finished.all():
                output[:, prompt_length + index + 1:] = pad
                break
            tokens, step_positions = next_tokens[:, None], step_positions[:, -1:] + 1
        return output


def split_for_jit(model):
    """(static structure, list of arrays): jitted calls then flatten plain arrays instead of an NNX state per call."""
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree_util.tree_flatten(state)
    return (graphdef, treedef), leaves


def merge_from_jit(structure, leaves):
    graphdef, treedef = structure
    return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, leaves))


# model -> {kind: (structure, jitted function)}: a jitted closure over the model's structure is built once, so that
# each call passes plain arrays and jax hashes nothing but their shapes (an NNX state costs milliseconds per call).
_COMPILED = weakref.WeakKeyDictionary()


def compiled_function(model, structure, kind, build):
    functions = _COMPILED.setdefault(model, {})
    if kind not in functions or functions[kind][0] != structure:
        functions[kind] = (structure, build(structure, kind))
    return functions[kind][1]


def _build_token_nll(structure, _):
    @jax.jit
    def token_nll(leaves, input_ids, attention_mask):
        model = merge_from_jit(structure, leaves)
        position_ids = None
        if attention_mask is not None:
            position_ids = jnp.where(attention_mask == 0, 1, jnp.cumsum(attention_mask, axis=1) - 1)
        logits, _ = model(input_ids, attention_mask, position_ids)
        log_probs = jax.nn.log_softmax(upcast(logits[:, :-1]), axis=-1)
        return -jnp.take_along_axis(log_probs, input_ids[:, 1:, None], axis=-1)[..., 0]

    return token_nll


def _build_decode_step(structure, sampling):
    @functools.partial(jax.jit, donate_argnums=1)
    def decode_step(leaves, cache, tokens, position_ids, key_valid, cache_index, rng):
        """Run `tokens` (B, S) at slots cache_index.. and pick the next token of every row."""
        model = merge_from_jit(structure, leaves)
        logits, cache = model(tokens, key_valid, position_ids, cache, cache_index)
        return next_token(upcast(logits[:, -1]), rng, *sampling), cache

    return decode_step


def next_token(logits, rng, do_sample, temperature, top_k, top_p):
    """Greedy, or sampling after temperature, top-k and top-p, in the order transformers applies them."""
    if not do_sample:
        return jnp.argmax(logits, axis=-1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        order = jnp.argsort(logits, axis=-1)  # ascending
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        drop = (cumulative <= 1.0 - top_p).at[:, -1].set(False)  # the most likely token always stays
        logits = jnp.where(jnp.zeros_like(drop).at[jnp.arange(drop.shape[0])[:, None], order].set(drop),
                           -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1)


# ------------------------------------------------------------------------------------------ checkpoint files


def checkpoint_name(key):
    """A flat NNX state path -> the PyTorch state-dict name (`kernel`/`embedding` are PyTorch's `weight`)."""
    parts = [str(part) for part in key]
    if parts[-1] in ("kernel", "embedding"):
        parts[-1] = "weight"
    return ".".join(parts)


def read_safetensors(path):
    """All tensors of a checkpoint directory as numpy arrays: one model.safetensors, or the shards of its index."""
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(single):
        return load_file(single)
    index_path = single + ".index.json"
    if not os.path.isfile(index_path):
        raise FileNotFoundError("neither model.safetensors nor model.safetensors.index.json is there")
    with open(index_path, encoding="utf-8") as handle:
        shards = sorted(set(json.load(handle)["weight_map"].values()))
    tensors = {}
    for shard in shards:
        tensors.update(load_file(os.path.join(path, shard)))
    return tensors


__all__ = ["ModernGPT2Model", "ModernGPT2ForCausalLM"]
