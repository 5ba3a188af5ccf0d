"""Build the model `moderngpt2 train` trains: fresh from a preset, or continued from a checkpoint.

The main vocabulary is the tokenizer's, rounded up to a multiple of 64 (matmul-friendly shapes; the extra rows
are never produced by the tokenizer). With `--tp_size` / `--fsdp_size` the model is placed by transformers'
own tensor-parallel plan and FSDP2 while it loads, which needs a checkpoint to load from: rank 0 first writes
the fresh model to OUTPUT/.initial-model (removed once every rank has loaded it).
"""

import inspect
import logging
import os
import shutil

from transformers import AutoModelForCausalLM

from ..configuration_moderngpt2 import MODEL_SIZE_PRESETS, ModernGPT2Config
from ..errors import UserError
from .optim import freeze_per_layer_embedding

logger = logging.getLogger(__name__)

VOCAB_MULTIPLE = 64
DEFAULT_PER_LAYER_VOCAB_SIZE = 10000
# ModelArguments fields that are config fields of the same name.
SHAPE_FLAGS = ("n_layer", "n_embd", "n_head", "num_key_value_heads", "head_dim", "n_inner", "rope_theta",
               "attn_logit_softcapping", "final_logit_softcapping", "sliding_window")
PER_LAYER_FLAGS = ("per_layer_hidden_size", "per_layer_combination_method", "per_layer_gate_activation",
                   "per_layer_projection_dropout")


def round_up(value: int, multiple: int = VOCAB_MULTIPLE) -> int:
    return -(-value // multiple) * multiple


def _parse_value(text: str):
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_config_overrides(text: str | None) -> dict:
    """'n_layer=2,n_embd=64' -> {'n_layer': 2, 'n_embd': 64}; names must be ModernGPT2Config arguments."""
    if not text:
        return {}
    known = set(inspect.signature(ModernGPT2Config.__init__).parameters) - {"self", "kwargs"}
    known |= set(ModernGPT2Config.attribute_map)
    overrides = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--config_overrides: '{item}' is not NAME=VALUE (example: 'n_layer=2,n_embd=64')")
        if key not in known:
            raise UserError(f"--config_overrides: '{key}' is not a ModernGPT2Config setting")
        overrides[key] = _parse_value(value)
    return overrides


def build_config(model_args, per_layer_args, tokenizer, block_size: int, per_layer_vocab=None) -> ModernGPT2Config:
    """The config of a fresh model: preset, then explicit flags, then --config_overrides."""
    settings = dict(
        model_size_name=model_args.model_size_name,
        vocab_size=round_up(len(tokenizer)),
        n_positions=block_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_per_layer_embedding=per_layer_args.use_per_layer_embedding,
    )
    settings.update({name: getattr(model_args, name) for name in SHAPE_FLAGS if getattr(model_args, name) is not None})
    if per_layer_args.use_per_layer_embedding:
        settings.update({name: getattr(per_layer_args, name) for name in PER_LAYER_FLAGS})
        # Without a vocabulary file the map is Gemma3n's (id itself below V_p): rows past the main vocabulary
        # would never be used, so the default V_p of 10000 is capped there.
        settings["per_layer_vocab_size"] = per_layer_args.per_layer_vocab_size or (
            per_layer_vocab.per_layer_vocab_size if per_layer_vocab is not None
            else min(DEFAULT_PER_LAYER_VOCAB_SIZE, settings["vocab_size"])
        )
    settings.update(parse_config_overrides(model_args.config_overrides))
    try:
        config = ModernGPT2Config(**settings)
    except ValueError as error:
        raise UserError(f"model config: {error}") from error
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


def _load_fresh_distributed(config, token_map, kwargs, distributed, output_dir):
    """Sharding happens while loading, so rank 0 writes the seeded fresh model for every rank to load."""
    import torch.distributed as dist

    directory = os.path.join(output_dir, ".initial-model")
    if dist.get_rank() == 0:
        _fresh_model(config, token_map, kwargs).save_pretrained(directory)
    dist.barrier()
    model = AutoModelForCausalLM.from_pretrained(directory, distributed_config=distributed, **kwargs)
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(directory, ignore_errors=True)
    return model


def load_model(model_args, per_layer_args, output_dir, config=None, token_map=None):
    """The model to train: `config` for a fresh one, else the checkpoint of --model_name_or_path."""
    distributed = _distributed_config(model_args)
    kwargs = _load_kwargs(model_args)
    try:
        if model_args.model_name_or_path is None and distributed is None:
            model = _fresh_model(config, token_map, kwargs)
        elif model_args.model_name_or_path is None:
            model = _load_fresh_distributed(config, token_map, kwargs, distributed, output_dir)
        else:
            extra = {"distributed_config": distributed} if distributed is not None else {}
            model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, **extra, **kwargs)
            if token_map is not None:
                model.set_per_layer_token_map(token_map)
    except (ValueError, OSError) as error:
        raise UserError(f"model: {str(error).splitlines()[0]}") from error
    if per_layer_args.freeze_per_layer_embedding:
        if not model.config.use_per_layer_embedding:
            raise UserError("--freeze-per-layer-embedding needs a model with per-layer embeddings")
        logger.info("froze the per-layer table (%d parameters)", freeze_per_layer_embedding(model))
    return model
