"""``moderngpt2 bench train``: training tokens/s, MFU and peak memory against transformers' Gemma2 and Llama."""

from types import SimpleNamespace

from ..arguments import DeviceArguments, ModelShapeArguments, PerLayerShapeArguments, parse_command
from ..bench.common import BENCH_DEFAULTS, JsonOutputArguments, ModelBenchArguments
from ..bench.train import TrainBenchArguments, failed, format_report, resolve_settings, run_benchmark

GROUPS = (TrainBenchArguments, ModelShapeArguments, PerLayerShapeArguments, ModelBenchArguments,
          JsonOutputArguments, DeviceArguments)


def parse_settings(argv: list[str]) -> SimpleNamespace:
    groups = parse_command("moderngpt2 bench train", GROUPS, argv, defaults=BENCH_DEFAULTS,
                           description="Training tokens/s, MFU and peak memory of ModernGPT2 against transformers' "
                                       "Gemma2 and Llama at identical shapes.")
    return resolve_settings(*groups)


def main(argv: list[str]) -> int:
    report = run_benchmark(parse_settings(argv))
    print(format_report(report))
    return 1 if failed(report) else 0
