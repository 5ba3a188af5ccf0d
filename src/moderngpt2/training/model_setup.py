"""Build the model `moderngpt2 train` trains: fresh from a preset, or continued from a checkpoint.

The main vocabulary is the tokenizer's, rounded up to a multiple of 64 (matmul-friendly shapes; the extra rows
are never produced by the tokenizer). With `--tp_size` / `--fsdp_size` the model is placed by transformers'
own tensor-parallel plan and FSDP2 while it loads, which needs a checkpoint to load from: rank 0 first writes
the fresh model to OUTPUT/.initial-model (removed once every rank has loaded it).
"""

import logging
import os

from transformers import AutoModelForCausalLM

from ..arguments import build_config as build_model_config
from ..arguments import config_settings
from ..configuration_moderngpt2 import MODEL_SIZE_PRESETS, ModernGPT2Config
from ..engines import load_fresh_sharded
from ..errors import UserError, first_line
from .optim import freeze_per_layer_embedding

logger = logging.getLogger(__name__)

VOCAB_MULTIPLE = 64


def round_up(value: int, multiple: int = VOCAB_MULTIPLE) -> int:
    return -(-value // multiple) * multiple


def build_config(shape_args, per_layer_shape_args, tokenizer, block_size: int, per_layer_vocab=None) -> ModernGPT2Config:
    """The config of a fresh model: the tokenizer's vocabulary and the data's block size, then the preset,
    explicit flags and --config_overrides (each wins over the one before)."""
    vocab_size = round_up(len(tokenizer))
    base = dict(vocab_size=vocab_size, n_positions=block_size, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    uses_per_layer = per_layer_shape_args.use_per_layer_embedding
    settings = config_settings(shape_args, per_layer_shape_args) if uses_per_layer else config_settings(shape_args)
    if uses_per_layer and "per_layer_vocab_size" not in settings:
        # Without a vocabulary file the map is Gemma3n's (id itself below V_p): rows past the main vocabulary
        # would never be used, so the config's default V_p is capped there.
        settings["per_layer_vocab_size"] = (per_layer_vocab.per_layer_vocab_size if per_layer_vocab is not None
                                            else min(ModernGPT2Config.field_defaults()["per_layer_vocab_size"], vocab_size))
    config = build_model_config(base, **settings)
    if config.vocab_size < len(tokenizer):
        raise UserError(f"vocab_size={config.vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens")
    if config.model_size_name is not None and not has_preset_shape(config):
        # Flags or overrides reshaped the preset: the checkpoint must not claim to be it.
        config.model_size_name = None
    logger.info("main vocabulary: %d tokenizer tokens, rounded up to %d (a multiple of %d)",
                len(tokenizer), config.vocab_size, VOCAB_MULTIPLE)
    return config


def has_preset_shape(config) -> bool:
    """Whether the layer shapes are exactly those of `config.model_size_name` (the context length may differ)."""
    preset = MODEL_SIZE_PRESETS[config.model_size_name]
    return all(getattr(config, name) == value for name, value in preset.items() if name != "n_positions") and (
        config.n_inner == 4 * config.n_embd)


def check_block_size(config, block_size: int, where: str):
    if block_size > config.n_positions:
        raise UserError(
            f"block_size {block_size} of the data is longer than the model's n_positions={config.n_positions} "
            f"({where}); pretokenize with a smaller --block_size or raise n_positions"
        )


def per_layer_token_map(per_layer_vocab, tokenizer, config) -> list[int]:
    """The vocabulary file's map, checked against the tokenizer and padded to the model's rounded vocabulary."""
    token_map = list(per_layer_vocab.token_map)
    if len(token_map) != len(tokenizer):
        raise UserError(
            f"the per-layer vocabulary maps {len(token_map)} main ids but the tokenizer has {len(tokenizer)}; "
            "rebuild it with `moderngpt2 per-layer-vocab` and this tokenizer"
        )
    if per_layer_vocab.per_layer_vocab_size > config.per_layer_vocab_size:
        raise UserError(
            f"the per-layer vocabulary has {per_layer_vocab.per_layer_vocab_size} entries, more than "
            f"--per-layer-vocab-size {config.per_layer_vocab_size}"
        )
    return token_map + [per_layer_vocab.unk_id] * (config.vocab_size - len(token_map))


def check_parallel_sizes(model_args) -> None:
    """--tp_size x --fsdp_size must be the number of processes the launcher started."""
    wanted = model_args.tp_size * model_args.fsdp_size
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if min(model_args.tp_size, model_args.fsdp_size) < 1:
        raise UserError("--tp_size and --fsdp_size must be at least 1")
    if wanted != world_size:
        raise UserError(f"--tp_size {model_args.tp_size} x --fsdp_size {model_args.fsdp_size} must equal the number "
                        f"of processes ({world_size}); launch with torchrun --nproc_per_node {wanted}")


def _distributed_config(model_args):
    if model_args.tp_size * model_args.fsdp_size == 1:
        return None
    check_parallel_sizes(model_args)
    from transformers.distributed import DistributedConfig

    return DistributedConfig(tp_size=model_args.tp_size, fsdp_size=model_args.fsdp_size)


def _load_kwargs(model_args) -> dict:
    kwargs = {}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    return kwargs


def _fresh_model(config, token_map, kwargs):
    model = AutoModelForCausalLM.from_config(config, **kwargs)
    if token_map is not None:
        model.set_per_layer_token_map(token_map)
    return model


def load_model(model_args, per_layer_args, output_dir: str, config=None, token_map=None):
    """The model to train: `config` for a fresh one, else the checkpoint of --model."""
    distributed = _distributed_config(model_args)
    kwargs = _load_kwargs(model_args)
    try:
        if model_args.model is None and distributed is None:
            model = _fresh_model(config, token_map, kwargs)
        elif model_args.model is None:
            model = load_fresh_sharded(lambda: _fresh_model(config, token_map, kwargs), kwargs, distributed,
                                       output_dir)
        else:
            extra = {"distributed_config": distributed} if distributed is not None else {}
            model = AutoModelForCausalLM.from_pretrained(model_args.model, **extra, **kwargs)
            if token_map is not None:
                model.set_per_layer_token_map(token_map)
    except (ValueError, OSError) as error:
        raise UserError(f"model: {first_line(error)}") from error
    if per_layer_args.freeze_per_layer_embedding:
        if not model.config.use_per_layer_embedding:
            raise UserError("--freeze-per-layer-embedding needs a model with per-layer embeddings")
        logger.info("froze the per-layer table (%d parameters)", freeze_per_layer_embedding(model))
    return model
