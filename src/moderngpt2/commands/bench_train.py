"""``moderngpt2 bench train``: training tokens/s, MFU and peak memory against transformers' Gemma2 and Llama."""

from types import SimpleNamespace

from ..bench import train
from .model_bench import parse_model_bench, run_model_bench


def parse_settings(argv: list[str]) -> SimpleNamespace:
    return parse_model_bench("moderngpt2 bench train", train, train.TrainBenchArguments, argv,
                             description="Training tokens/s, MFU and peak memory of ModernGPT2 against "
                                         "transformers' Gemma2 and Llama at identical shapes.")


def main(argv: list[str]) -> int:
    return run_model_bench(train, parse_settings(argv))
