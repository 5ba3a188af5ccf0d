"""``moderngpt2 quickstart``: the whole pipeline end to end, each stage the command a user would type."""

from ..arguments import parse_command
from ..cli import run
from ..quickstart import QuickstartArguments, run as run_quickstart


def main(argv: list[str]) -> int:
    (settings,) = parse_command(
        "moderngpt2 quickstart", (QuickstartArguments,), argv,
        description="Train a small ModernGPT2 with per-layer embeddings end to end on a corpus built from the "
                    "Python standard library's docstrings: tokenizer, pretokenized data, per-layer vocabulary, "
                    "training, perplexity before and after, a sample, TensorBoard logs and a loss-curve PNG.")
    run_quickstart(settings, run)
    return 0
