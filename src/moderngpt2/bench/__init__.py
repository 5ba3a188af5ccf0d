"""``moderngpt2 bench``: speed benchmarks, one subcommand per workload.

``train`` and ``generate`` compare ModernGPT2 with transformers' own models at identical shapes;
``pretokenize`` measures the data pipeline. Each subcommand's module is imported only when it runs.
"""

import importlib

from ..errors import UserError

SUBCOMMANDS = {
    "train": ("moderngpt2.bench.train", "training tokens/s, MFU and peak memory against Gemma2 and Llama"),
    "generate": ("moderngpt2.bench.generate", "generation tokens/s at batch 1 and 16 against Gemma2"),
    "pretokenize": ("moderngpt2.bench.pretokenize", "pretokenization throughput"),
}


def usage() -> str:
    lines = ["usage: moderngpt2 bench <train|generate|pretokenize> [options]", "", "benchmarks:"]
    lines += [f"  {name:<12}{description}" for name, (_, description) in SUBCOMMANDS.items()]
    lines += ["", "Run 'moderngpt2 bench <benchmark> --help' for its options."]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        raise UserError(f"unknown benchmark '{name}'; choose one of {', '.join(SUBCOMMANDS)}")
    return importlib.import_module(SUBCOMMANDS[name][0]).main(rest) or 0
