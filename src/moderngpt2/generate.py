"""`moderngpt2 generate`: sample text from a checkpoint, streamed to the terminal as it is produced.

    moderngpt2 generate --model out/final --prompt "The meaning of" --max_new_tokens 60 --temperature 0.8
"""

import argparse
import secrets
import sys

import torch

from .argparsing import CommandParser
from .data.arguments import add_flag
from .errors import UserError
from .frameworks import FRAMEWORKS, check_torch_only_flags, load_causal_lm
from .devices import DTYPES
from .loading import load_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="moderngpt2 generate", description=__doc__.splitlines()[0])
    add_flag(parser, "--model", required=True, help="model directory (OUTPUT/final of `moderngpt2 train`)")
    add_flag(parser, "--prompt", nargs="+", required=True, help="one or more prompts, each continued in turn")
    add_flag(parser, "--max_new_tokens", type=int, default=100, help="tokens to generate per prompt (default 100)")
    add_flag(parser, "--temperature", type=float, default=0.8,
             help="sampling temperature; 0 means greedy decoding (default 0.8)")
    add_flag(parser, "--top_k", type=int, default=50,
             help="sample among the k most likely tokens; 0 = all (default 50)")
    add_flag(parser, "--top_p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    add_flag(parser, "--repetition_penalty", type=float, default=1.0, help="> 1 discourages repeats (default 1.0)")
    add_flag(parser, "--seed", type=int, default=None, help="random seed, for reproducible samples")
    add_flag(parser, "--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    add_flag(parser, "--dtype", default="auto", choices=("auto", *DTYPES), help="weights dtype (default auto)")
    add_flag(parser, "--framework", choices=FRAMEWORKS, default="torch",
             help="implementation to run: torch (default), jax or tf (needs the extra of the same name)")
    return parser


def check_sampling(args):
    if args.max_new_tokens < 1:
        raise UserError(f"--max_new_tokens {args.max_new_tokens}: must be at least 1")
    if args.temperature < 0:
        raise UserError(f"--temperature {args.temperature}: must be >= 0 (0 = greedy)")
    if args.top_k < 0:
        raise UserError(f"--top_k {args.top_k}: must be >= 0 (0 = no limit)")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top_p {args.top_p}: must be in (0, 1]")
    if args.repetition_penalty <= 0:
        raise UserError(f"--repetition_penalty {args.repetition_penalty}: must be > 0")


def generation_settings(args, tokenizer) -> dict:
    sample = args.temperature > 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    settings = dict(max_new_tokens=args.max_new_tokens, do_sample=sample, repetition_penalty=args.repetition_penalty,
                    pad_token_id=pad)
    if sample:
        settings.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    else:
        # Greedy: make sure sampling settings stored in the checkpoint's generation config do not apply.
        settings.update(temperature=None, top_k=None, top_p=None)
    return settings


def checked_prompts(args):
    for index, prompt in enumerate(args.prompt):
        if not prompt:
            raise UserError(f"--prompt #{index + 1} is empty")
        yield prompt


def generate_with_torch(args) -> None:
    """transformers' generate, streamed to the terminal as tokens arrive."""
    from transformers import TextStreamer, set_seed

    model, tokenizer = load_checkpoint(args.model, args.device, args.dtype)
    if args.seed is not None:
        set_seed(args.seed)
    streamer = TextStreamer(tokenizer, skip_special_tokens=True)
    settings = generation_settings(args, tokenizer)
    for index, prompt in enumerate(checked_prompts(args)):
        encoded = tokenizer(prompt, return_tensors="pt")
        length = encoded["input_ids"].shape[1] + args.max_new_tokens
        if length > model.config.n_positions:
            raise UserError(f"--prompt #{index + 1} ({encoded['input_ids'].shape[1]} tokens) + --max_new_tokens "
                            f"{args.max_new_tokens} exceeds the model's context of {model.config.n_positions} "
                            "tokens: lower --max_new_tokens or shorten the prompt")
        with torch.no_grad():
            model.generate(input_ids=encoded["input_ids"].to(model.device),
                           attention_mask=encoded["attention_mask"].to(model.device), streamer=streamer, **settings)
        sys.stdout.flush()


def generate_with_framework(args) -> None:
    """The `--framework jax|tf` model's generate; each continuation is printed whole, as the streamer prints it."""
    from .tokenization import load_tokenizer

    check_torch_only_flags(args)
    if args.repetition_penalty != 1.0:
        raise UserError(f"--repetition_penalty {args.repetition_penalty}: only with --framework torch")
    model = load_causal_lm(args.framework, args.model)
    tokenizer = load_tokenizer(args.model)
    settings = generation_settings(args, tokenizer)
    del settings["repetition_penalty"]
    if settings["do_sample"]:
        settings["seed"] = args.seed if args.seed is not None else secrets.randbits(31)
    else:
        settings.update(temperature=1.0, top_k=0, top_p=1.0)
    for prompt in checked_prompts(args):
        encoded = tokenizer(prompt, return_tensors="np")
        tokens = model.generate(encoded["input_ids"], encoded["attention_mask"],
                                eos_token_id=model.config.get("eos_token_id"), **settings)
        print(tokenizer.decode(tokens[0], skip_special_tokens=True), flush=True)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_sampling(args)
    if args.framework == "torch":
        generate_with_torch(args)
    else:
        generate_with_framework(args)
    return 0
