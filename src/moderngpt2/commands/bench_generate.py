"""``moderngpt2 bench generate``: greedy generation tokens/s against transformers' Gemma2 (or our JAX/TF ports)."""

from types import SimpleNamespace

from ..arguments import DeviceArguments, ModelShapeArguments, PerLayerShapeArguments, parse_command
from ..bench.common import BENCH_DEFAULTS, JsonOutputArguments, ModelBenchArguments
from ..bench.generate import GenerateBenchArguments, failed, format_report, resolve_settings, run_benchmark

GROUPS = (GenerateBenchArguments, ModelShapeArguments, PerLayerShapeArguments, ModelBenchArguments,
          JsonOutputArguments, DeviceArguments)


def parse_settings(argv: list[str]) -> SimpleNamespace:
    groups = parse_command("moderngpt2 bench generate", GROUPS, argv, defaults=BENCH_DEFAULTS,
                           description="Greedy generation tokens/s of ModernGPT2 against transformers' Gemma2 at "
                                       "identical shapes.")
    return resolve_settings(*groups)


def main(argv: list[str]) -> int:
    report = run_benchmark(parse_settings(argv))
    print(format_report(report))
    return 1 if failed(report) else 0
