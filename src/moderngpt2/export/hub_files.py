"""The files that make a model directory usable by anyone: a portable tokenizer and a generation config.

Both the final checkpoint of `moderngpt2 train` and the Gemma2 export write them through here, so a model
found on a hub behaves the same whichever way it was produced.
"""

import json
from pathlib import Path

from ..fileio import write_json

# Written by transformers 5 and unknown to (or misread by) transformers 4; the portable names replace them.
_TRANSFORMERS5_ONLY = ("backend", "extra_special_tokens")


def save_portable_tokenizer(tokenizer, out, model_max_length: int) -> None:
    """Save `tokenizer` so that transformers 4.x and 5.x load it and truncate at the model's context length.

    transformers 5 names its fast tokenizers `TokenizersBackend` and stores extra special tokens as a list,
    both of which transformers 4 cannot load; `PreTrainedTokenizerFast` with `additional_special_tokens`
    means the same to both.
    """
    out = Path(out)
    extra = [token for token in getattr(tokenizer, "additional_special_tokens", None) or []]
    tokenizer.model_max_length = model_max_length
    tokenizer.save_pretrained(out)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for key in _TRANSFORMERS5_ONLY:
        config.pop(key, None)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_max_length"] = model_max_length
    if extra:
        config["additional_special_tokens"] = extra
    write_json(config_path, config, ensure_ascii=False)


def save_generation_config(config, out, tokenizer=None) -> None:
    """generation_config.json with the end-of-sequence and padding ids (from the config, else the tokenizer)."""
    from transformers import GenerationConfig

    def token_id(name):
        value = getattr(config, f"{name}_token_id", None)
        if value is None and tokenizer is not None:
            value = getattr(tokenizer, f"{name}_token_id", None)
        return value

    generation_config = GenerationConfig(bos_token_id=token_id("bos"), eos_token_id=token_id("eos"),
                                         pad_token_id=token_id("pad"))
    generation_config.save_pretrained(out)
