"""Configuration of ModernGPT2: a GPT-2-sized decoder with Gemma2 internals and optional per-layer embeddings.

Field names follow GPT-2 (`n_embd`, `n_layer`, `n_head`, `n_positions`, `n_inner`); the standard transformers
names (`hidden_size`, `num_hidden_layers`, `num_attention_heads`, `max_position_embeddings`, `intermediate_size`)
are aliases of them. This file imports only transformers so that it can travel next to a checkpoint and be loaded
with `trust_remote_code=True`.
"""

import inspect

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

# GPT-2's depth/width ladder with head_dim 64 and grouped-query attention switched on.
MODEL_SIZE_PRESETS = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=4, num_key_value_heads=2, head_dim=16, n_positions=128),
    "small": dict(n_layer=12, n_embd=768, n_head=12, num_key_value_heads=4, head_dim=64, n_positions=1024),
    "medium": dict(n_layer=24, n_embd=1024, n_head=16, num_key_value_heads=4, head_dim=64, n_positions=1024),
    "large": dict(n_layer=36, n_embd=1280, n_head=20, num_key_value_heads=4, head_dim=64, n_positions=1024),
    "xl": dict(n_layer=48, n_embd=1600, n_head=25, num_key_value_heads=5, head_dim=64, n_positions=1024),
}
# Used when neither a preset nor an explicit value is given: the `small` shape.
DEFAULT_SHAPE = MODEL_SIZE_PRESETS["small"]

# Every Auto class the package registers. A saved config carries all of them, so a checkpoint loads through
# each with `trust_remote_code=True` (save_pretrained on its own writes only the saving class's entry).
AUTO_MAP = {
    "AutoConfig": "configuration_moderngpt2.ModernGPT2Config",
    "AutoModel": "modeling_moderngpt2.ModernGPT2Model",
    "AutoModelForCausalLM": "modeling_moderngpt2.ModernGPT2ForCausalLM",
    "AutoModelForSequenceClassification": "modeling_moderngpt2.ModernGPT2ForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_moderngpt2.ModernGPT2ForTokenClassification",
}
LAYER_TYPES = ("full_attention", "sliding_attention")
PER_LAYER_COMBINATION_METHODS = ("scaled_add", "concat", "gated")
PER_LAYER_GATE_ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh", "relu")


class ModernGPT2Config(PreTrainedConfig):
    r"""
    Configuration for [`ModernGPT2Model`] and its heads.

    Args:
        model_size_name (`str`, *optional*):
            One of `tiny`, `small`, `medium`, `large`, `xl`. Fills the shape fields (`n_layer`, `n_embd`, `n_head`,
            `num_key_value_heads`, `head_dim`, `n_positions`); any of them passed explicitly wins over the preset.
            Without a preset the shape defaults to `small` (12 layers, 768 wide, 12 heads, 4 KV heads).
        vocab_size (`int`, defaults to 32000): size of the main vocabulary.
        n_positions (`int`): the context length the model is trained for. RoPE has no table, so positions past it
            still work (quality is whatever the model learned).
        n_embd (`int`): hidden size H.
        n_layer (`int`): number of decoder layers L.
        n_head (`int`): number of query heads.
        num_key_value_heads (`int`): number of key/value heads (grouped-query attention); must divide `n_head`.
        head_dim (`int`): size of one attention head; independent of `n_embd / n_head`.
        n_inner (`int`, *optional*): MLP width. `None` means `4 * n_embd`, GPT-2's convention.
        activation_function (`str`, defaults to `"gelu_pytorch_tanh"`): MLP gate activation (GeGLU); any key of
            transformers' `ACT2FN`.
        rms_norm_eps (`float`, defaults to 1e-6): epsilon of every RMSNorm.
        rope_theta (`float`, defaults to 10000.0): RoPE base frequency.
        query_pre_attn_scalar (`float`, *optional*): attention scores are scaled by `query_pre_attn_scalar ** -0.5`;
            `None` means `head_dim`.
        attn_logit_softcapping (`float`, *optional*): if set, attention scores become `c * tanh(s / c)`.
        final_logit_softcapping (`float`, *optional*): if set, LM logits become `c * tanh(z / c)`.
        sliding_window (`int`, *optional*): window of the `sliding_attention` layers (a query sees itself and the
            `sliding_window - 1` tokens before it).
        layer_types (`list[str]`, *optional*): per layer, `"full_attention"` or `"sliding_attention"`. `None` means
            all full attention, or, when `sliding_window` is set, Gemma2's alternation (sliding, full, sliding, ...).
        attention_dropout, resid_pdrop, embd_pdrop (`float`, default 0.0): dropout on attention probabilities, on
            the attention/MLP outputs before the residual add, and on the scaled token embeddings.
        initializer_range (`float`, defaults to 0.02): std of the normal init.
        tie_word_embeddings (`bool`, defaults to `True`): the LM head shares the token embedding matrix.
        use_per_layer_embedding (`bool`, defaults to `False`): enable Gemma3n-style per-layer embeddings (PLE).
        per_layer_vocab_size (`int`, defaults to 10000): rows of the per-layer embedding table.
        per_layer_hidden_size (`int`, defaults to 256): per-layer embedding width d.
        per_layer_combination_method (`str`, defaults to `"scaled_add"`): `scaled_add` (Gemma3n), `concat` or `gated`.
        per_layer_gate_activation (`str`, defaults to `"silu"`): one of `silu`, `gelu`, `gelu_pytorch_tanh`, `relu`.
        per_layer_projection_dropout (`float`, defaults to 0.0): dropout on the per-layer input inside each gate.
    """

    model_type = "moderngpt2"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]  # the output's cache field: new and old name
    attribute_map = {
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "max_position_embeddings": "n_positions",
        "intermediate_size": "n_inner",
    }
    # Column-wise q/k/v/gate/up and row-wise o/down, like Gemma2: the attention derives its local head count from
    # the projected tensor, so a sharded q_proj just yields fewer heads per rank.
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    def __init__(
        self,
        model_size_name=None,
        vocab_size=32000,
        n_positions=None,
        n_embd=None,
        n_layer=None,
        n_head=None,
        num_key_value_heads=None,
        head_dim=None,
        n_inner=None,
        activation_function="gelu_pytorch_tanh",
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        query_pre_attn_scalar=None,
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
        sliding_window=None,
        layer_types=None,
        attention_dropout=0.0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        initializer_range=0.02,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        use_cache=True,
        use_per_layer_embedding=False,
        per_layer_vocab_size=10000,
        per_layer_hidden_size=256,
        per_layer_combination_method="scaled_add",
        per_layer_gate_activation="silu",
        per_layer_projection_dropout=0.0,
        **kwargs,
    ):
        # The standard names may arrive as keyword arguments (code written for other configs); they mean the same.
        aliased = {field: kwargs.pop(alias) for alias, field in self.attribute_map.items() if alias in kwargs}
        n_positions = aliased.get("n_positions") if n_positions is None else n_positions
        n_embd = aliased.get("n_embd") if n_embd is None else n_embd
        n_layer = aliased.get("n_layer") if n_layer is None else n_layer
        n_head = aliased.get("n_head") if n_head is None else n_head
        n_inner = aliased.get("n_inner") if n_inner is None else n_inner

        if model_size_name is not None and model_size_name not in MODEL_SIZE_PRESETS:
            raise ValueError(
                f"model_size_name={model_size_name!r} is not a preset; choose one of {', '.join(MODEL_SIZE_PRESETS)}"
            )
        shape = MODEL_SIZE_PRESETS[model_size_name] if model_size_name is not None else DEFAULT_SHAPE
        explicit = dict(
            n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
            num_key_value_heads=num_key_value_heads, head_dim=head_dim,
        )
        resolved = {name: shape[name] if value is None else value for name, value in explicit.items()}

        self.model_size_name = model_size_name
        self.vocab_size = vocab_size
        self.n_positions = resolved["n_positions"]
        self.n_embd = resolved["n_embd"]
        self.n_layer = resolved["n_layer"]
        self.n_head = resolved["n_head"]
        self.num_key_value_heads = resolved["num_key_value_heads"]
        self.head_dim = resolved["head_dim"]
        self.n_inner = n_inner if n_inner is not None else 4 * self.n_embd
        self.activation_function = activation_function
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.query_pre_attn_scalar = query_pre_attn_scalar if query_pre_attn_scalar is not None else self.head_dim
        self.attn_logit_softcapping = attn_logit_softcapping
        self.final_logit_softcapping = final_logit_softcapping
        self.sliding_window = sliding_window
        if layer_types is None:
            layer_types = [
                "sliding_attention" if sliding_window is not None and i % 2 == 0 else "full_attention"
                for i in range(self.n_layer)
            ]
        self.layer_types = list(layer_types)
        self.attention_dropout = attention_dropout
        self.resid_pdrop = resid_pdrop
        self.embd_pdrop = embd_pdrop
        self.initializer_range = initializer_range
        self.tie_word_embeddings = tie_word_embeddings
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.use_cache = use_cache
        self.use_per_layer_embedding = use_per_layer_embedding
        self.per_layer_vocab_size = per_layer_vocab_size
        self.per_layer_hidden_size = per_layer_hidden_size
        self.per_layer_combination_method = per_layer_combination_method
        self.per_layer_gate_activation = per_layer_gate_activation
        self.per_layer_projection_dropout = per_layer_projection_dropout
        # Validated before transformers' own checks, so a user sees the message naming our field first.
        self.validate_moderngpt2()
        kwargs["auto_map"] = {**AUTO_MAP, **(kwargs.get("auto_map") or {})}
        super().__init__(**kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ModernGPT2Config":
        """The config of a preset (`tiny` ... `xl`) with any fields overridden; the one way code builds a preset."""
        return cls(model_size_name=name, **overrides)

    @classmethod
    def field_defaults(cls) -> dict:
        """{ModernGPT2 field: its default}, in the constructor's order: the one place code reads the defaults."""
        parameters = inspect.signature(cls.__init__).parameters
        return {name: p.default for name, p in parameters.items() if name not in ("self", "kwargs")}

    @classmethod
    def argument_names(cls) -> frozenset:
        """The settings the constructor takes by name, its own and the standard transformers aliases."""
        return frozenset(set(cls.field_defaults()) | set(cls.attribute_map))

    @classmethod
    def resolved_fields(cls, raw: dict) -> dict:
        """config.json's dict with every ModernGPT2 field filled in as this constructor fills it (presets, n_inner,
        layer_types, ...): what the JAX and Keras ports build from, so the defaults are written once."""
        config = cls(**{key: value for key, value in raw.items() if key not in ("model_type", "transformers_version")})
        kept = {key: value for key, value in raw.items() if key not in cls.attribute_map}
        return {**kept, **{name: getattr(config, name) for name in sorted(cls.field_defaults())}}

    def validate_moderngpt2(self):
        """Reject impossible settings with a message naming the field and what is allowed."""
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "num_key_value_heads", "head_dim",
                     "n_inner", "per_layer_vocab_size", "per_layer_hidden_size"):
            _require_positive_int(name, getattr(self, name))
        if self.n_head % self.num_key_value_heads != 0:
            raise ValueError(
                f"n_head={self.n_head} is not divisible by num_key_value_heads={self.num_key_value_heads}; "
                f"choose num_key_value_heads among {[d for d in range(1, self.n_head + 1) if self.n_head % d == 0]}"
            )
        if self.activation_function not in ACT2FN:
            raise ValueError(
                f"activation_function={self.activation_function!r} is unknown; "
                f"choose one of {', '.join(sorted(ACT2FN))}"
            )
        for name in ("rms_norm_eps", "rope_theta", "query_pre_attn_scalar", "initializer_range"):
            if not _is_number(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive number")
        for name in ("attn_logit_softcapping", "final_logit_softcapping"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or value <= 0):
                raise ValueError(f"{name}={value!r} must be a positive number, or None to switch softcapping off")
        for name in ("attention_dropout", "resid_pdrop", "embd_pdrop", "per_layer_projection_dropout"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value!r} must be a probability in [0, 1)")
        self._validate_layer_types()
        if self.per_layer_combination_method not in PER_LAYER_COMBINATION_METHODS:
            raise ValueError(
                f"per_layer_combination_method={self.per_layer_combination_method!r} is unknown; "
                f"choose one of {', '.join(PER_LAYER_COMBINATION_METHODS)}"
            )
        if self.per_layer_gate_activation not in PER_LAYER_GATE_ACTIVATIONS:
            raise ValueError(
                f"per_layer_gate_activation={self.per_layer_gate_activation!r} is unknown; "
                f"choose one of {', '.join(PER_LAYER_GATE_ACTIVATIONS)}"
            )

    def _validate_layer_types(self):
        if len(self.layer_types) != self.n_layer:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries but n_layer={self.n_layer}; give one per layer"
            )
        unknown = sorted({t for t in self.layer_types if t not in LAYER_TYPES})
        if unknown:
            raise ValueError(f"layer_types contains {unknown}; each entry must be one of {', '.join(LAYER_TYPES)}")
        if self.sliding_window is not None:
            _require_positive_int("sliding_window", self.sliding_window)
        elif "sliding_attention" in self.layer_types:
            raise ValueError(
                "layer_types uses 'sliding_attention' but sliding_window is None; set sliding_window to a positive size"
            )

    def _remove_keys_not_serialized(self, d):
        # Whether the attention backend was picked automatically is a property of the loaded model, not the checkpoint.
        super()._remove_keys_not_serialized(d)
        d.pop("attn_implementation_is_automatic", None)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require_positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive integer")


__all__ = ["ModernGPT2Config"]
