"""The ``moderngpt2`` console script: one entry point, one subcommand per pipeline step.

Each subcommand lives in its own module and exposes ``main(argv)``; modules are imported only when their
subcommand runs, so ``moderngpt2 --help`` stays fast.
"""

import importlib
import sys

from .errors import UserError
from .fileio import filesystem_fault
from .engines import exit_process, take_local_rank

# command -> (module under moderngpt2.commands, one-line description); a dict is a group of sub-commands.
COMMANDS = {
    "quickstart": ("quickstart", "train a small model end to end on a corpus built from Python's docstrings"),
    "train-tokenizer": ("train_tokenizer", "train a byte-level BPE or unigram tokenizer"),
    "pretokenize": ("pretokenize", "turn raw text into Parquet (or Megatron) shards of token blocks"),
    "per-layer-vocab": ("per_layer_vocab", "build a per-layer vocabulary from corpus statistics"),
    "train": ("train", "pretrain a model with the Hugging Face Trainer"),
    "evaluate": ("evaluate", "perplexity of a checkpoint on held-out text, or lm-evaluation-harness tasks"),
    "generate": ("generate", "generate text from a checkpoint"),
    "info": ("info", "parameter counts and config of a preset or checkpoint"),
    "convert-gemma2": ("convert_gemma2", "convert a transformers Gemma2 checkpoint to ModernGPT2"),
    "export": ("export", "export a checkpoint as a standard Gemma2 directory or a GGUF file"),
    "configs": ("configs", "list the shipped DeepSpeed/Accelerate configs, or copy them out"),
    "bench": {
        "train": ("bench_train", "training tokens/s, MFU and peak memory against Gemma2 and Llama"),
        "generate": ("bench_generate", "generation tokens/s at batch 1 and 16 against Gemma2"),
        "pretokenize": ("bench_pretokenize", "pretokenization throughput"),
    },
}
GROUP_DESCRIPTIONS = {"bench": "benchmarks: train, generate, pretokenize"}


def usage(prefix: str, table: dict) -> str:
    width = max(map(len, table))
    lines = [f"usage: {prefix} <command> [options]", "", "commands:"]
    for name, entry in table.items():
        description = GROUP_DESCRIPTIONS[name] if isinstance(entry, dict) else entry[1]
        lines.append(f"  {name:<{width}}  {description}")
    lines += ["", f"Run '{prefix} <command> --help' for the options of one command."]
    return "\n".join(lines)


def resolve(argv: list[str]) -> tuple[str, tuple | dict, list[str]]:
    """(the command's full name, its table entry, the words after it): `bench train --steps 2` ->
    ('moderngpt2 bench train', ('bench_train', ...), ['--steps', '2']). The walk stops at the first word that
    is not a command of the table it stands in, or at a command module."""
    name, entry, words = "moderngpt2", COMMANDS, list(argv)
    while isinstance(entry, dict) and words and words[0] in entry:
        name, entry, words = f"{name} {words[0]}", entry[words[0]], words[1:]
    return name, entry, words


def run(argv: list[str]) -> int:
    """Run one command (`train ...`, `bench train ...`); a user's mistake raises UserError."""
    name, entry, words = resolve(argv)
    if not isinstance(entry, dict):
        return importlib.import_module(f"moderngpt2.commands.{entry[0]}").main(words) or 0
    if not words or words[0] in ("-h", "--help"):
        print(usage(name, entry))
        return 0
    raise UserError(f"unknown command '{words[0]}'; choose one of {', '.join(entry)}")


def main(argv=None) -> int:
    # DeepSpeed's launcher writes --local_rank=N before the command; the rank is in LOCAL_RANK too.
    argv = take_local_rank(list(sys.argv[1:] if argv is None else argv))
    command = resolve(argv)[0]
    try:
        return run(argv)
    except UserError as error:
        print(f"{command}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a full or read-only disk, whichever writer met it
        message = filesystem_fault(error)
        if message is None:
            raise
        print(f"{command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130


def entry_point():
    """The process's entry (console script, `python -m moderngpt2.cli`): run main, exit with its code
    (`engines.exit_process` explains how a rank of a distributed run leaves)."""
    exit_process(main())


if __name__ == "__main__":
    entry_point()
