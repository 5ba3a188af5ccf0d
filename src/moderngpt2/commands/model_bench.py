"""What `bench train` and `bench generate` share as commands: the argument groups, and printing a report."""

from types import ModuleType, SimpleNamespace

from ..arguments import DeviceArguments, ModelShapeArguments, PerLayerShapeArguments, parse_command
from ..bench.common import BENCH_DEFAULTS, JsonOutputArguments, ModelBenchArguments

SHARED_GROUPS = (ModelShapeArguments, PerLayerShapeArguments, ModelBenchArguments, JsonOutputArguments,
                 DeviceArguments)


def parse_model_bench(prog: str, bench: ModuleType, own_arguments: type, argv: list[str],
                      description: str) -> SimpleNamespace:
    """`own_arguments` and the shared groups, parsed and resolved by `bench.resolve_settings`."""
    groups = parse_command(prog, (own_arguments, *SHARED_GROUPS), argv, description=description,
                           defaults=BENCH_DEFAULTS)
    return bench.resolve_settings(*groups)


def run_model_bench(bench: ModuleType, settings: SimpleNamespace) -> int:
    """Run `bench` and print its report; status 1 when a model failed (the others' numbers are still reported)."""
    report = bench.run_benchmark(settings)
    print(bench.format_report(report))
    return 1 if bench.failed(report) else 0
