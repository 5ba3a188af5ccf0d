"""The ``moderngpt2`` console script: one entry point, one subcommand per pipeline step.

Each subcommand lives in its own module and exposes ``main(argv)``; modules are imported only when their
subcommand runs, so ``moderngpt2 --help`` stays fast.
"""

import importlib
import sys

from .errors import UserError

# subcommand -> (module, one-line description)
SUBCOMMANDS = {
    "quickstart": ("moderngpt2.quickstart", "train a small model end to end on a corpus built from Python's docstrings"),
    "train-tokenizer": ("moderngpt2.tokenization", "train a byte-level BPE or unigram tokenizer"),
    "pretokenize": ("moderngpt2.data.pretokenize", "turn raw text into Parquet (or Megatron) shards of token blocks"),
    "per-layer-vocab": ("moderngpt2.data.per_layer_vocab", "build a per-layer vocabulary from corpus statistics"),
    "train": ("moderngpt2.training.train", "pretrain a model with the Hugging Face Trainer"),
    "evaluate": ("moderngpt2.evaluate", "perplexity of a checkpoint on held-out text"),
    "generate": ("moderngpt2.generate", "generate text from a checkpoint"),
    "info": ("moderngpt2.info", "parameter counts and config of a preset or checkpoint"),
    "convert-gemma2": ("moderngpt2.convert", "convert a transformers Gemma2 checkpoint to ModernGPT2"),
    "bench": ("moderngpt2.bench", "benchmarks: train, generate, pretokenize"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: moderngpt2 <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in SUBCOMMANDS.items()]
    lines += ["", "Run 'moderngpt2 <command> --help' for the options of one command."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(f"moderngpt2: unknown command '{command}'. Choose one of: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[command][0])
    try:
        return module.main(rest) or 0
    except UserError as error:
        print(f"moderngpt2 {command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"moderngpt2 {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
