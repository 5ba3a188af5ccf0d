"""Load a trained checkpoint (model and tokenizer) for evaluation or generation."""

import os

from .devices import pick_device, pick_dtype
from .errors import UserError, first_line
from .fileio import check_safetensors
from .jsonfile import read_json_object


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
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise UserError(f"{model_dir}: no config.json, so not a saved model (use OUTPUT/final of `moderngpt2 train`)")
    check_model_directory(model_dir)
    target = pick_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=pick_dtype(dtype, target))
    except (OSError, ValueError) as error:
        raise UserError(f"{model_dir}: cannot load the model: {first_line(error)}") from error
    tokenizer = load_tokenizer(model_dir)
    return model.to(target).eval(), tokenizer
