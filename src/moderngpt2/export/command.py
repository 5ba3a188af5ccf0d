"""``moderngpt2 export --format gemma2|gguf SRC DST``: one command for every format a checkpoint can leave in."""

import argparse

import torch

from ..argparsing import CommandParser
from ..errors import UserError

GEMMA2_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="moderngpt2 export",
        description="Export a ModernGPT2 checkpoint (without per-layer embeddings) as a transformers Gemma2 "
                    "directory (no remote code needed) or as a GGUF file for llama.cpp / Ollama.",
    )
    parser.add_argument("--format", required=True, choices=("gemma2", "gguf"), help="output format")
    parser.add_argument("src", help="ModernGPT2 checkpoint directory (e.g. a training run's final/)")
    parser.add_argument("dst", help="gemma2: output directory; gguf: output file (OUT.gguf)")
    parser.add_argument("--dtype", help=f"gemma2: {', '.join(GEMMA2_DTYPES)} (default: the stored dtype); "
                                        f"gguf: {', '.join(GGUF_DTYPES)} (default: f32)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.format == "gemma2":
        from .gemma2 import export_gemma2

        if args.dtype is not None and args.dtype not in GEMMA2_DTYPES:
            raise UserError(f"--dtype {args.dtype} is not available for --format gemma2; "
                            f"choose one of {', '.join(GEMMA2_DTYPES)}")
        out = export_gemma2(args.src, args.dst, GEMMA2_DTYPES.get(args.dtype), args.overwrite)
        print(f"wrote Gemma2ForCausalLM directory to {out}")
        return 0
    from .gguf import export_gguf

    if args.dtype is not None and args.dtype not in GGUF_DTYPES:
        raise UserError(f"--dtype {args.dtype} is not available for --format gguf; choose one of {', '.join(GGUF_DTYPES)}")
    out = export_gguf(args.src, args.dst, args.dtype or "f32", args.overwrite)
    print(f"wrote GGUF file (llama.cpp architecture gemma2) to {out}")
    return 0
