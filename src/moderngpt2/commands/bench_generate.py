"""``moderngpt2 bench generate``: greedy generation tokens/s against transformers' Gemma2 (or our JAX/TF ports)."""

from types import SimpleNamespace

from ..bench import generate
from .model_bench import parse_model_bench, run_model_bench


def parse_settings(argv: list[str]) -> SimpleNamespace:
    return parse_model_bench("moderngpt2 bench generate", generate, generate.GenerateBenchArguments, argv,
                             description="Greedy generation tokens/s of ModernGPT2 against transformers' Gemma2 "
                                         "at identical shapes.")


def main(argv: list[str]) -> int:
    return run_model_bench(generate, parse_settings(argv))
