"""The ``moderngpt2`` console script: one entry point, one subcommand per pipeline step.

Each subcommand lives in its own module and exposes ``main(argv)``; modules are imported only when their
subcommand runs, so ``moderngpt2 --help`` stays fast.
"""

import atexit
import importlib
import os
import sys

from .errors import UserError
from .fileio import filesystem_fault
from .training.launch import take_local_rank

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
    "export": ("moderngpt2.export.command", "export a checkpoint as a standard Gemma2 directory or a GGUF file"),
    "bench": ("moderngpt2.bench", "benchmarks: train, generate, pretokenize"),
    "configs": ("moderngpt2.shipped_configs", "list the shipped DeepSpeed/Accelerate configs, or copy them out"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: moderngpt2 <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in SUBCOMMANDS.items()]
    lines += ["", "Run 'moderngpt2 <command> --help' for the options of one command."]
    return "\n".join(lines)


def main(argv=None) -> int:
    # DeepSpeed's launcher writes --local_rank=N before the subcommand; the rank is in LOCAL_RANK too.
    argv = take_local_rank(list(sys.argv[1:] if argv is None else argv))
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
    except Exception as error:  # a full or read-only disk, whichever writer met it
        message = filesystem_fault(error)
        if message is None:
            raise
        print(f"moderngpt2 {command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"moderngpt2 {command}: interrupted", file=sys.stderr)
        return 130


def entry_point():
    """The process's entry (console script, `python -m moderngpt2.cli`): run main, exit with its code.

    A rank of a distributed run (WORLD_SIZE > 1) runs Python's exit handlers, then leaves with os._exit.
    torch keeps C++ references to a gloo process group once DDP or DeepSpeed has used it, so
    destroy_process_group cannot stop its threads; tearing them down among the interpreter's finalizers
    occasionally aborted a finished rank with SIGABRT ("terminate called without an active exception").
    """
    code = main()
    if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1"):
        atexit._run_exitfuncs()  # logging, TensorBoard and experiment trackers flush and close here
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry_point()
