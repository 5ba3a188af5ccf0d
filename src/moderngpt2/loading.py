"""Read a trained checkpoint: the model and tokenizer for evaluation or generation, or its config alone."""

import os
from pathlib import Path

from .devices import pick_device, pick_dtype
from .errors import UserError, first_line
from .fileio import check_safetensors
from .jsonfile import read_json_object


def require_saved_model(model_dir: str) -> None:
    """A directory with a config.json, or a one-line error pointing at the training run's final model."""
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise UserError(f"{model_dir}: no config.json, so not a saved model (use OUTPUT/final of `moderngpt2 train`)")


def check_model_directory(model_dir: str) -> None:
    """A ModernGPT2 checkpoint with whole weight files, before transformers reads it."""
    config = read_json_object(os.path.join(model_dir, "config.json"), "model config")
    if config.get("model_type") != "moderngpt2":
        raise UserError(f"{model_dir} holds a {config.get('model_type', 'unknown')!r} model, not moderngpt2; "
                        "convert a Gemma2 checkpoint with `moderngpt2 convert-gemma2`, or use OUTPUT/final of "
                        "`moderngpt2 train`")
    for name in sorted(os.listdir(model_dir)):
        if name.endswith(".safetensors"):
            check_safetensors(os.path.join(model_dir, name))


def load_checkpoint(model_dir: str, device: str = "auto", dtype: str = "auto"):
    """(model in eval mode on the device, tokenizer) from a directory written by `moderngpt2 train`."""
    from transformers import AutoModelForCausalLM

    from .tokenization import load_tokenizer

    if not os.path.isdir(model_dir):
        raise UserError(f"{model_dir}: no such model directory (use OUTPUT/final of `moderngpt2 train`)")
    require_saved_model(model_dir)
    check_model_directory(model_dir)
    target = pick_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=pick_dtype(dtype, target))
    except (OSError, ValueError) as error:
        raise UserError(f"{model_dir}: cannot load the model: {first_line(error)}") from error
    tokenizer = load_tokenizer(model_dir)
    return model.to(target).eval(), tokenizer


def checkpoint_config_fields(path: str) -> dict:
    """The config fields of a ModernGPT2 checkpoint (a directory or its config.json), or of a Gemma2 one mapped
    to ModernGPT2's names: what `info` reports on without loading any weights."""
    from .gemma2_mapping import moderngpt2_config_kwargs, read_gemma2_config

    path = Path(path)
    config_path = path / "config.json" if path.is_dir() else path
    if not config_path.is_file():
        raise UserError(f"{config_path} does not exist; give a checkpoint directory or its config.json")
    raw = read_json_object(config_path, "checkpoint config")
    model_type = raw.get("model_type")
    if model_type == "gemma2":
        return moderngpt2_config_kwargs(read_gemma2_config(config_path.parent))
    if model_type != "moderngpt2":
        raise UserError(f"{config_path}: model_type is {model_type!r}; expected 'moderngpt2' (or 'gemma2')")
    return {key: value for key, value in raw.items() if key not in ("model_type", "transformers_version", "auto_map")}
