"""`moderngpt2 train`: pretrain a model with the Hugging Face Trainer (see moderngpt2.training.train)."""

from ..training.arguments import parse_arguments
from ..training.train import train


def main(argv: list[str]) -> int:
    return train(parse_arguments(argv), command_argv=list(argv))
