"""ModernGPT2: a GPT-2-class decoder with Gemma2 internals and optional Gemma3n-style per-layer embeddings.

Laid out as transformers' `modeling_gemma2.py`, with module names following Gemma2 (`embed_tokens`,
`layers.{i}.self_attn.q_proj`, ..., `norm`), so a Gemma2 state dict loads 1:1. The per-layer embedding modules
(Gemma3n-style) live in `per_layer_moderngpt2.py`, the attention functions in `attention_moderngpt2.py`. This
file imports only torch, transformers and its sibling `*_moderngpt2` modules, so it is saved next to a checkpoint
and loads with `trust_remote_code=True` where this package is not installed.
"""

import dataclasses
import math

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (BaseModelOutputWithPast, CausalLMOutputWithPast,
                                         SequenceClassifierOutputWithPast, TokenClassifierOutput)
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .attention_moderngpt2 import (ATTENTION_FUNCTIONS, AttentionMask, build_attention_masks, is_external_attention,
                                   resolve_attn_implementation, select_attention_backend)
from .configuration_moderngpt2 import ModernGPT2Config
from .loss_moderngpt2 import (DEFAULT_CHUNK_SIZE, causal_lm_loss_from_logits, fused_linear_cross_entropy, softcap,
                              upcast)
from .per_layer_moderngpt2 import (ModernGPT2PerLayerEmbedding, ModernGPT2PerLayerGate, ModernGPT2PerLayerProjection,
                                   check_per_layer_unk_id, checked_per_layer_token_map, default_per_layer_token_map,
                                   per_layer_ids_for_generation, resized_per_layer_token_map, scaled)


# transformers 5.24 renamed the cache argument of forward/generate and the cache field of every output from
# `past_key_values` to `cache`; the old name still works there, but with a deprecation warning. The fields of an
# output class say which name the running transformers uses, once, at import.
CACHE_NAME = "cache" if "cache" in {f.name for f in dataclasses.fields(BaseModelOutputWithPast)} else "past_key_values"


def resolve_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The cache passed under either name: `cache` (transformers >= 5.24) or `past_key_values` (before)."""
    if cache is not None and past_key_values is not None:
        raise ValueError("pass the cache once, as `cache` or as `past_key_values`, not both")
    return past_key_values if cache is None else cache


class ModernGPT2RMSNorm(nn.Module):
    """RMSNorm computed in float32 with a `(1 + w)` gain, `w` initialised to 0 (Gemma2)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_up = upcast(x)
        normed = x_up * torch.rsqrt(x_up.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * (1.0 + upcast(self.weight))).type_as(x)

    def extra_repr(self):
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


class ModernGPT2MLP(nn.Module):
    """Gated MLP: down(act(gate(x)) * up(x)); GeGLU with the default activation."""

    def __init__(self, config: ModernGPT2Config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.down_proj.is_residual_projection = True
        self.act_fn = ACT2FN[config.activation_function]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class ModernGPT2RotaryEmbedding(nn.Module):
    """RoPE (rotate-half). cos/sin are computed for the positions present, with no table, so any position works.

    The inverse frequencies are a float32 buffer computed once; non-persistent, so checkpoints do not carry them.
    """

    def __init__(self, config: ModernGPT2Config):
        super().__init__()
        self.head_dim = config.head_dim
        self.base = config.rope_theta
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)  # (D/2,)

    def compute_inv_freq(self, device=None):
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float() / self.head_dim
        return 1.0 / (self.base**exponents)  # (D/2,) float32

    def _apply(self, fn, *args, **kwargs):
        # `model.to(torch.bfloat16)` casts every floating buffer. A bf16 frequency is off by up to 2^-9 relative,
        # which at position 1000 turns into a rotation error of tenths of a radian, so the frequencies are
        # recomputed in float32 on the new device instead of being cast.
        super()._apply(fn, *args, **kwargs)
        if self.inv_freq.dtype != torch.float32:
            self.inv_freq = self.compute_inv_freq(self.inv_freq.device)
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(position_ids.device)  # (B, S, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, S, D)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotates half the hidden dims: (x1, x2) -> (-x2, x1)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k: (B, H, S, D); cos, sin: (B, S, D)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, S, D)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class ModernGPT2Attention(nn.Module):
    """Grouped-query attention with RoPE, Gemma2 query scaling, optional softcap and sliding window."""

    def __init__(self, config: ModernGPT2Config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = config.query_pre_attn_scalar**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=False)
        self.o_proj.is_residual_projection = True
        self.attn_logit_softcapping = config.attn_logit_softcapping
        self.sliding_window = config.sliding_window if config.layer_types[layer_idx] == "sliding_attention" else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: AttentionMask,
        attn_backend: str,
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        # The head count comes from the projected width, never from the config, so a column-sharded
        # (tensor-parallel) projection simply yields this rank's heads.
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, Hq, S, D)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, Hkv, S, D)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, Hkv, S, D)
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, *position_embeddings)
        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx)  # (B, Hkv, K, D)

        attention_interface = ATTENTION_FUNCTIONS[attn_backend]
        if is_external_attention(attn_backend):  # registered from outside, e.g. by vLLM: a boolean mask tensor
            attention_mask = attention_mask.dense(self.sliding_window)
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            sliding_window=self.sliding_window,
            softcap=self.attn_logit_softcapping,
            **kwargs,
        )  # (B, S, Hq, D)
        attn_output = self.o_proj(attn_output.reshape(*input_shape, -1).contiguous())  # (B, S, H)
        return attn_output, attn_weights


class ModernGPT2DecoderLayer(GradientCheckpointingLayer):
    """Sandwich-norm block: h = x + norm(attn(norm(x))); out = h + norm(mlp(norm(h))); PLE gate first if enabled."""

    def __init__(self, config: ModernGPT2Config, layer_idx: int):
        super().__init__()
        self.attention_type = config.layer_types[layer_idx]
        self.self_attn = ModernGPT2Attention(config, layer_idx)
        self.mlp = ModernGPT2MLP(config)
        self.input_layernorm = ModernGPT2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = ModernGPT2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.pre_feedforward_layernorm = ModernGPT2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_feedforward_layernorm = ModernGPT2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)
        self.per_layer_gate = None
        if config.use_per_layer_embedding:
            self.per_layer_gate = ModernGPT2PerLayerGate(
                config, norm=ModernGPT2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            )

    def forward(
        self,
        hidden_states: torch.Tensor,
        per_layer_input: torch.Tensor | None = None,
        attention_mask: AttentionMask | None = None,
        attn_backend: str = "eager",
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if self.per_layer_gate is not None:
            hidden_states = self.per_layer_gate(hidden_states, per_layer_input)
        residual = hidden_states
        hidden_states, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            attn_backend=attn_backend,
            cache=cache,
            **kwargs,
        )
        hidden_states = residual + self.resid_dropout(self.post_attention_layernorm(hidden_states))
        residual = hidden_states
        hidden_states = self.mlp(self.pre_feedforward_layernorm(hidden_states))
        return residual + self.resid_dropout(self.post_feedforward_layernorm(hidden_states))


class ModernGPT2ScaledWordEmbedding(nn.Embedding):
    """Token embeddings times `embed_scale` (sqrt(hidden_size)), scaled inside the module as in Gemma2.

    So `inputs_embeds` means what `get_input_embeddings()` returns: `model(inputs_embeds=embed(ids))` equals
    `model(input_ids=ids)`. The tied LM head reads the raw `weight`.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, embed_scale: float):
        super().__init__(num_embeddings, embedding_dim)
        self.embed_scale = embed_scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return scaled(super().forward(input_ids), self.embed_scale)


class ModernGPT2PreTrainedModel(PreTrainedModel):
    config: ModernGPT2Config
    config_class = ModernGPT2Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ModernGPT2DecoderLayer"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    # Attention runs through `attention_moderngpt2.ATTENTION_FUNCTIONS`: ours, or any function registered with
    # transformers' AttentionInterface under another name (vLLM's Transformers backend).
    _supports_attention_backend = True
    _can_record_outputs = {
        "hidden_states": ModernGPT2DecoderLayer,
        "attentions": ModernGPT2Attention,
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        """normal(0, std) everywhere, residual output projections std / sqrt(2 L), RMSNorm gains 0."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "is_residual_projection", False):
                std = std / math.sqrt(2 * self.config.num_hidden_layers)
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, ModernGPT2RMSNorm):
            init.zeros_(module.weight)
        elif isinstance(module, ModernGPT2RotaryEmbedding):
            # non-persistent, so never loaded: from_pretrained materialises it empty and relies on this
            init.copy_(module.inv_freq, module.compute_inv_freq(module.inv_freq.device))
        elif isinstance(module, ModernGPT2PerLayerProjection):
            module.init_combination()
        elif isinstance(module, ModernGPT2Model) and module.config.use_per_layer_embedding:
            init.copy_(module.per_layer_token_map, default_per_layer_token_map(module.config))

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        return True

    def _check_and_adjust_attn_implementation(self, attn_implementation, is_init_check=False, **kwargs):
        return self.get_correct_attn_implementation(attn_implementation, is_init_check)

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        """An explicit request is honoured or refused with a ValueError naming the setting; without one the choice
        is automatic, per forward (`attention_moderngpt2.select_attention_backend`)."""
        return resolve_attn_implementation(self.config, requested_attention)

    def set_attn_implementation(self, attn_implementation, *args, **kwargs):
        if isinstance(attn_implementation, str):
            self.config.attn_implementation_is_automatic = False  # explicit, even if it equals the automatic one
        return super().set_attn_implementation(attn_implementation, *args, **kwargs)

    def attention_backend(self, device, query_length: int | None = None, has_cache: bool = False,
                          document_mask: bool = False, attention_weights: bool = False) -> str:
        """The backend a forward on `device` uses: a full sequence by default, `query_length=1, has_cache=True`
        for a decode step, `document_mask=True` with document ids, `attention_weights=True` for
        `output_attentions` (see `select_attention_backend`)."""
        return select_attention_backend(self.config, torch.device(device).type, query_length, has_cache,
                                        self.training, document_mask, attention_weights)

    def set_per_layer_token_map(self, token_map) -> None:
        """Install a main-id -> per-layer-id map: vocab_size integers in [0, per_layer_vocab_size).

        Available on the base model and every head; the map is a persistent buffer of the base model, so it is
        saved and loaded with the weights.
        """
        if not self.config.use_per_layer_embedding:
            raise ValueError("set_per_layer_token_map needs a model built with use_per_layer_embedding=True")
        token_map = checked_per_layer_token_map(token_map, self.config.vocab_size, self.config.per_layer_vocab_size)
        with torch.no_grad():
            self.base_model.per_layer_token_map.copy_(token_map)

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True, per_layer_unk_id: int | None = None) -> nn.Embedding:
        """transformers' resize, keeping the per-layer token map one entry per main id.

        Shrinking truncates the map. New main ids map to `per_layer_unk_id` when given; otherwise to what
        Gemma3n's rule gives them while the map is still the default one, else to the map's unknown row (see
        `resized_per_layer_token_map`).
        """
        if not self.config.use_per_layer_embedding:
            return super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        check_per_layer_unk_id(per_layer_unk_id, self.config.per_layer_vocab_size)  # before anything changes
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        base = self.base_model
        base.per_layer_token_map = resized_per_layer_token_map(
            base.per_layer_token_map, self.config.vocab_size, self.config.per_layer_vocab_size, per_layer_unk_id
        )
        return embeddings


class ModernGPT2Model(ModernGPT2PreTrainedModel):
    def __init__(self, config: ModernGPT2Config):
        super().__init__(config)
        self.embed_tokens = ModernGPT2ScaledWordEmbedding(
            config.vocab_size, config.hidden_size, embed_scale=config.hidden_size**0.5
        )
        self.embed_dropout = nn.Dropout(config.embd_pdrop)
        self.layers = nn.ModuleList(ModernGPT2DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = ModernGPT2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = ModernGPT2RotaryEmbedding(config)
        if config.use_per_layer_embedding:
            self.embed_tokens_per_layer = ModernGPT2PerLayerEmbedding(config)
            self.per_layer_projection = ModernGPT2PerLayerProjection(
                config, norm=ModernGPT2RMSNorm(config.per_layer_hidden_size, eps=config.rms_norm_eps)
            )
            # main id -> per-layer id; persistent, so it travels in the checkpoint and generation needs nothing extra
            self.register_buffer("per_layer_token_map", default_per_layer_token_map(config), persistent=True)
        self.gradient_checkpointing = False
        self.post_init()

    def map_per_layer_ids(self, input_ids: torch.LongTensor) -> torch.LongTensor:
        """Per-layer ids of main token ids through the stored token map."""
        return self.per_layer_token_map[input_ids]

    def per_layer_inputs(self, input_ids, inputs_embeds, per_layer_input_ids):
        """(B, S, L, d): each layer's per-layer input; the projection alone with only `inputs_embeds` (Gemma3n)."""
        if per_layer_input_ids is None and input_ids is not None:
            per_layer_input_ids = self.map_per_layer_ids(input_ids)
        per_layer_embeds = None
        if per_layer_input_ids is not None:
            per_layer_embeds = self.embed_tokens_per_layer(per_layer_input_ids)  # (B, S, L, d)
        return self.per_layer_projection(inputs_embeds, per_layer_embeds)

    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        per_layer_input_ids: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        document_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        r"""
        per_layer_input_ids: (B, S) explicit per-layer ids; by default mapped from `input_ids` (the token map).
        document_ids: (B, S) integers for packed sequences: a position attends only to earlier positions with the
            same id, so documents packed into one row do not see each other. RoPE positions are not restarted per
            document: attention scores depend only on relative positions, so each document's outputs equal those
            of a forward over it alone. For forwards without cached content (training, evaluation, scoring).
        use_cache: defaults to `config.use_cache` outside training; training never builds a cache.
        """
        cache = resolve_cache(cache, past_key_values)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        seq_len = inputs_embeds.shape[1]
        past_seen = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = (torch.arange(seq_len, device=inputs_embeds.device) + past_seen).unsqueeze(0)

        per_layer_inputs = None
        if self.config.use_per_layer_embedding:
            per_layer_inputs = self.per_layer_inputs(input_ids, inputs_embeds, per_layer_input_ids)  # (B, S, L, d)

        wants_weights = kwargs.get("output_attentions", self.config.output_attentions)
        attn_backend = self.attention_backend(inputs_embeds.device, seq_len, cache is not None,
                                              document_ids is not None, bool(wants_weights))
        masks = build_attention_masks(self.config.layer_types, attention_mask, cache, past_seen, seq_len,
                                      inputs_embeds.device, document_ids)
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)
        hidden_states = self.embed_dropout(inputs_embeds)

        for i, decoder_layer in enumerate(self.layers):
            hidden_states = decoder_layer(
                hidden_states,
                None if per_layer_inputs is None else per_layer_inputs[:, :, i, :],
                attention_mask=masks[decoder_layer.attention_type],
                attn_backend=attn_backend,
                position_embeddings=position_embeddings,
                cache=cache,
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, **{CACHE_NAME: cache if use_cache else None})


class ModernGPT2ForCausalLM(ModernGPT2PreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}
    _fsdp_plan = {"lm_head": "keep_full_weight"}
    # Positions per loss chunk: bounds the float32 logits held at once to loss_chunk_size x vocab_size.
    loss_chunk_size = DEFAULT_CHUNK_SIZE

    def __init__(self, config: ModernGPT2Config):
        super().__init__(config)
        self.model = ModernGPT2Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        per_layer_input_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | slice | torch.Tensor = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
        return_logits: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        labels: token ids, shifted inside (position t predicts labels[t + 1]); -100 is ignored.
        shift_labels (in `kwargs`, as in transformers, so the Trainer does not take it for a label column): targets
            already shifted (context parallelism); position t predicts shift_labels[t].
        num_items_in_batch: the loss is sum / num_items_in_batch (exact gradient accumulation); else the mean.
        return_logits: with labels, the loss is fused with the LM head in chunks of `loss_chunk_size` positions
            (`loss_moderngpt2.py`) and `logits` is None; `return_logits=True` computes the logits too (naive path).
        """
        shift_labels = kwargs.pop("shift_labels", None)
        wants_loss = labels is not None or shift_labels is not None
        if wants_loss and use_cache is None:
            use_cache = False
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=resolve_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            per_layer_input_ids=per_layer_input_ids,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        return_logits = not wants_loss if return_logits is None else return_logits

        loss = logits = None
        if return_logits or (wants_loss and self.lm_head_is_distributed()):
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = self.lm_head(hidden_states[:, keep, :])
            if self.config.final_logit_softcapping is not None:
                logits = softcap(logits, self.config.final_logit_softcapping)
            if wants_loss:
                loss = causal_lm_loss_from_logits(logits, labels, num_items_in_batch, shift_labels)
        elif wants_loss:
            loss = fused_linear_cross_entropy(hidden_states, self.lm_head.weight, labels,
                                              self.config.final_logit_softcapping, num_items_in_batch,
                                              shift_labels, self.loss_chunk_size)

        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def lm_head_is_distributed(self) -> bool:
        """Whether a tensor-parallel plan hooks the LM head: its weight is then one shard of the vocabulary, and
        the loss needs the gathered logits the hooked head returns (the naive path)."""
        return bool(self.lm_head._forward_hooks or self.lm_head._forward_pre_hooks)

    def prepare_inputs_for_generation(self, input_ids, inputs_embeds=None, per_layer_input_ids=None, **kwargs):
        # Everything else (the cache among it, under whichever name this transformers uses) passes through untouched.
        model_inputs = super().prepare_inputs_for_generation(input_ids, inputs_embeds=inputs_embeds, **kwargs)
        if per_layer_input_ids is not None:
            current = model_inputs.get("input_ids")
            current_length = (current if current is not None else model_inputs["inputs_embeds"]).shape[1]
            model_inputs["per_layer_input_ids"] = per_layer_ids_for_generation(
                per_layer_input_ids, input_ids, inputs_embeds, self.model.per_layer_token_map, current_length
            )
        return model_inputs

    def create_masks_for_generate(self, attention_mask=None, **kwargs):
        # The model builds its own masks from the 2-D padding mask, for every cache type.
        return attention_mask


class ModernGPT2ScoringModel(ModernGPT2PreTrainedModel):
    """The base model with a linear `score` layer on every position; what the two classification heads share.

    Not transformers' GenericFor*Classification: ours pool the last *attended* token, so batches classify without
    a pad token (GPT-2-style tokenizers have none; the generic head refuses batches then), and the token head keeps
    a bias-free `score` and no dropout by default (the generic one adds a bias and 0.1 dropout, which would change
    checkpoints). A `classifier_dropout` attribute on the config, if any, is applied before `score`.
    """

    def __init__(self, config: ModernGPT2Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = ModernGPT2Model(config)
        self.dropout = nn.Dropout(getattr(config, "classifier_dropout", None) or 0.0)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        per_layer_input_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast | TokenClassifierOutput:
        """`kwargs` reach the base model (`cache`/`past_key_values`, `use_cache`, `output_*`)."""
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            inputs_embeds=inputs_embeds, per_layer_input_ids=per_layer_input_ids, **kwargs,
        )
        logits = self.score(self.dropout(outputs.last_hidden_state))  # (B, S, num_labels)
        return self.head_output(outputs, logits, labels, input_ids, attention_mask)


class ModernGPT2ForSequenceClassification(ModernGPT2ScoringModel):
    """Classifies a sequence from its last real token (the last attended one, else the last non-pad one)."""

    def head_output(self, outputs, logits, labels, input_ids, attention_mask):
        positions = torch.arange(logits.shape[1], device=logits.device)
        if attention_mask is not None:
            last = (positions * attention_mask.to(logits.device, torch.long)).argmax(-1)
        elif input_ids is not None and self.config.pad_token_id is not None:
            real = (input_ids != self.config.pad_token_id).to(logits.device, torch.long)
            last = (positions * real).argmax(-1)
        else:
            last = torch.full((logits.shape[0],), logits.shape[1] - 1, device=logits.device)
        pooled_logits = logits[torch.arange(logits.shape[0], device=logits.device), last]  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, pooled_logits=pooled_logits, config=self.config)
        return SequenceClassifierOutputWithPast(
            loss=loss, logits=pooled_logits, **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
        )


class ModernGPT2ForTokenClassification(ModernGPT2ScoringModel):
    """Labels every token."""

    def head_output(self, outputs, logits, labels, input_ids, attention_mask):
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config)
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = [
    "ModernGPT2PreTrainedModel",
    "ModernGPT2Model",
    "ModernGPT2ForCausalLM",
    "ModernGPT2ForSequenceClassification",
    "ModernGPT2ForTokenClassification",
]
