"""How a ModernGPT2 checkpoint and a transformers Gemma2 checkpoint correspond: config fields and tensor names.

ModernGPT2 keeps Gemma2's module names, so a tensor keeps its name either way; what the mapping checks is that
the name exists on the other side. The config fields differ in name (GPT-2's `n_embd` for `hidden_size`, ...).
`convert-gemma2` reads this mapping one way, `export --format gemma2` the other, and `info` uses it to read a
Gemma2 checkpoint's shape.
"""

import re
from pathlib import Path

from .errors import UserError
from .jsonfile import read_json_object

# Gemma2 config field -> ModernGPT2 config field. Fields not listed have no ModernGPT2 equivalent and must hold
# their neutral value (checked in `moderngpt2_config_kwargs`).
CONFIG_MAP = {
    "vocab_size": "vocab_size",
    "hidden_size": "n_embd",
    "intermediate_size": "n_inner",
    "num_hidden_layers": "n_layer",
    "num_attention_heads": "n_head",
    "num_key_value_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "hidden_activation": "activation_function",
    "max_position_embeddings": "n_positions",
    "rms_norm_eps": "rms_norm_eps",
    "initializer_range": "initializer_range",
    "query_pre_attn_scalar": "query_pre_attn_scalar",
    "attn_logit_softcapping": "attn_logit_softcapping",
    "final_logit_softcapping": "final_logit_softcapping",
    "sliding_window": "sliding_window",
    "layer_types": "layer_types",
    "attention_dropout": "attention_dropout",
    "tie_word_embeddings": "tie_word_embeddings",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "pad_token_id": "pad_token_id",
    "use_cache": "use_cache",
}

# The tensor names both architectures share; "{}" stands for the layer index.
TENSOR_NAMES = frozenset({
    "model.embed_tokens.weight",
    "model.norm.weight",
    "lm_head.weight",
    *(f"model.layers.{{}}.{module}.weight" for module in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
        "input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm",
    )),
})

_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def _shared_tensor_name(key: str, checkpoint_kind: str) -> str:
    """`key` itself when both architectures have that tensor; a UserError naming it otherwise."""
    match = _LAYER_INDEX.search(key)
    template = key.replace(match.group(0), ".{}.", 1) if match else key
    if template not in TENSOR_NAMES:
        raise UserError(f"tensor '{key}' is not part of a {checkpoint_kind} checkpoint; nothing was written")
    return key


def to_moderngpt2_key(gemma2_key: str) -> str:
    """Map one Gemma2 tensor name to its ModernGPT2 name (UserError for a name Gemma2 does not have)."""
    return _shared_tensor_name(gemma2_key, "Gemma2ForCausalLM")


def to_gemma2_key(moderngpt2_key: str) -> str:
    """Map one ModernGPT2 tensor name to its Gemma2 name (UserError for a name Gemma2 has no place for)."""
    return _shared_tensor_name(moderngpt2_key, "Gemma2-compatible ModernGPT2")


def read_checkpoint_config(src: Path, config_class, model_type: str, kind: str, hint: str):
    """Load SRC/config.json as ``config_class`` (its defaults fill fields the file omits); UserError for a
    missing file, another model type or an invalid config."""
    config_path = src / "config.json"
    if not config_path.is_file():
        raise UserError(f"{src} is not a checkpoint directory: {config_path} is missing")
    raw = read_json_object(config_path, "checkpoint config")
    if raw.get("model_type") != model_type:
        raise UserError(f"{config_path}: model_type is {raw.get('model_type')!r}, expected {model_type!r}; {hint}")
    try:
        return config_class.from_dict(raw)
    except (TypeError, ValueError) as error:
        raise UserError(f"{config_path}: invalid {kind} config ({error})") from None


def read_gemma2_config(src: Path):
    """Load SRC/config.json as a transformers ``Gemma2Config``."""
    from transformers import Gemma2Config

    return read_checkpoint_config(src, Gemma2Config, "gemma2", "Gemma2", "give a Gemma2 checkpoint directory")


def moderngpt2_config_kwargs(gemma2_config) -> dict:
    """The ModernGPT2 config arguments equivalent to a Gemma2 config; UserError for features ModernGPT2 lacks."""
    if getattr(gemma2_config, "attention_bias", False):
        raise UserError("the Gemma2 config has attention_bias=true; ModernGPT2 has no attention biases")
    if getattr(gemma2_config, "use_bidirectional_attention", None):
        raise UserError("the Gemma2 config uses bidirectional attention; ModernGPT2 is a causal language model")
    rope = getattr(gemma2_config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default":
        raise UserError(f"the Gemma2 config uses rope_type '{rope_type}'; ModernGPT2 supports plain RoPE only")
    kwargs = {ours: getattr(gemma2_config, theirs) for theirs, ours in CONFIG_MAP.items()}
    kwargs["rope_theta"] = float(rope.get("rope_theta", getattr(gemma2_config, "rope_theta", 10000.0)))
    if "sliding_attention" not in (kwargs["layer_types"] or []):
        kwargs["sliding_window"] = None
    return kwargs


def gemma2_config_kwargs(config) -> dict:
    """The Gemma2 config arguments of the fields a ModernGPT2 config shares with it (the reverse of the above)."""
    return {theirs: getattr(config, ours) for theirs, ours in CONFIG_MAP.items()}
