"""``moderngpt2 bench pretokenize``: `moderngpt2 pretokenize` against the usual ``datasets.map`` recipe."""

from ..arguments import parse_command
from ..bench.common import JsonOutputArguments
from ..bench.pretokenize import PretokenizeBenchArguments, format_report, run_benchmark


def main(argv: list[str]) -> int:
    settings, output = parse_command(
        "moderngpt2 bench pretokenize", (PretokenizeBenchArguments, JsonOutputArguments), argv,
        description="Pretokenization throughput of ModernGPT2 against the datasets.map recipe, on the same corpus.")
    result = run_benchmark(settings, output.output_json)
    print(format_report(result))
    return 0 if result["same_token_stream"] else 1
