"""Sample text from a checkpoint, streamed to the terminal as it is produced (`moderngpt2 generate`).

    moderngpt2 generate --model out/final --prompt "The meaning of" --max_new_tokens 60 --temperature 0.8
"""

import secrets
import sys
from dataclasses import dataclass

import torch

from .arguments import arg
from .errors import UserError
from .frameworks import check_torch_only_flags, load_causal_lm
from .loading import load_checkpoint


@dataclass
class Sampling:
    """How each continuation is drawn (temperature 0: greedy decoding); checked when made."""

    _argument_group_name = "sampling"

    max_new_tokens: int = arg(100, "tokens to generate per prompt")
    temperature: float = arg(0.8, "sampling temperature; 0 means greedy decoding")
    top_k: int = arg(50, "sample among the k most likely tokens; 0 = all")
    top_p: float = arg(0.95, "nucleus sampling mass")
    repetition_penalty: float = arg(1.0, "> 1 discourages repeats")
    seed: int | None = arg(None, "random seed, for reproducible samples")

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise UserError(f"--max_new_tokens {self.max_new_tokens}: must be at least 1")
        if self.temperature < 0:
            raise UserError(f"--temperature {self.temperature}: must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise UserError(f"--top_k {self.top_k}: must be >= 0 (0 = no limit)")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top_p {self.top_p}: must be in (0, 1]")
        if self.repetition_penalty <= 0:
            raise UserError(f"--repetition_penalty {self.repetition_penalty}: must be > 0")


def generation_settings(sampling: Sampling, tokenizer) -> dict:
    sample = sampling.temperature > 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    settings = dict(max_new_tokens=sampling.max_new_tokens, do_sample=sample,
                    repetition_penalty=sampling.repetition_penalty, pad_token_id=pad)
    if sample:
        settings.update(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
    else:
        # Greedy: make sure sampling settings stored in the checkpoint's generation config do not apply.
        settings.update(temperature=None, top_k=None, top_p=None)
    return settings


def checked_prompts(prompts: list[str]):
    for index, prompt in enumerate(prompts):
        if not prompt:
            raise UserError(f"--prompt #{index + 1} is empty")
        yield prompt


def generate_with_torch(model_dir: str, prompts: list[str], sampling: Sampling, device: str, dtype: str) -> None:
    """transformers' generate, streamed to the terminal as tokens arrive."""
    from transformers import TextStreamer, set_seed

    model, tokenizer = load_checkpoint(model_dir, device, dtype)
    if sampling.seed is not None:
        set_seed(sampling.seed)
    streamer = TextStreamer(tokenizer, skip_special_tokens=True)
    settings = generation_settings(sampling, tokenizer)
    for index, prompt in enumerate(checked_prompts(prompts)):
        encoded = tokenizer(prompt, return_tensors="pt")
        length = encoded["input_ids"].shape[1] + sampling.max_new_tokens
        if length > model.config.n_positions:
            raise UserError(f"--prompt #{index + 1} ({encoded['input_ids'].shape[1]} tokens) + --max_new_tokens "
                            f"{sampling.max_new_tokens} exceeds the model's context of {model.config.n_positions} "
                            "tokens: lower --max_new_tokens or shorten the prompt")
        with torch.no_grad():
            model.generate(input_ids=encoded["input_ids"].to(model.device),
                           attention_mask=encoded["attention_mask"].to(model.device), streamer=streamer, **settings)
        sys.stdout.flush()


def generate_with_framework(model_dir: str, prompts: list[str], sampling: Sampling, framework: str, device: str,
                            dtype: str) -> None:
    """The `--framework jax|tf` model's generate; each continuation is printed whole, as the streamer prints it."""
    from .tokenization import load_tokenizer

    check_torch_only_flags(framework, device, dtype)
    if sampling.repetition_penalty != 1.0:
        raise UserError(f"--repetition_penalty {sampling.repetition_penalty}: only with --framework torch")
    model = load_causal_lm(framework, model_dir)
    tokenizer = load_tokenizer(model_dir)
    settings = generation_settings(sampling, tokenizer)
    del settings["repetition_penalty"]
    if settings["do_sample"]:
        settings["seed"] = sampling.seed if sampling.seed is not None else secrets.randbits(31)
    else:
        settings.update(temperature=1.0, top_k=0, top_p=1.0)
    for prompt in checked_prompts(prompts):
        encoded = tokenizer(prompt, return_tensors="np")
        tokens = model.generate(encoded["input_ids"], encoded["attention_mask"],
                                eos_token_id=model.config.get("eos_token_id"), **settings)
        print(tokenizer.decode(tokens[0], skip_special_tokens=True), flush=True)


def generate_text(model_dir: str, prompts: list[str], sampling: Sampling, *, framework: str, device: str,
                  dtype: str) -> None:
    """Continue each prompt in turn with the checkpoint, printing the text as it comes."""
    if framework == "torch":
        generate_with_torch(model_dir, prompts, sampling, device, dtype)
    else:
        generate_with_framework(model_dir, prompts, sampling, framework, device, dtype)
