"""Convert a transformers Gemma2 checkpoint directory (safetensors) into a ModernGPT2 checkpoint.

    moderngpt2 convert-gemma2 SRC DST [--dtype bfloat16] [--overwrite]
"""

from dataclasses import dataclass

from ..arguments import arg, parse_command
from ..convert import convert_gemma2
from ..devices import DTYPES, dtype_name
from ..errors import UserError


@dataclass
class ConvertArguments:
    _argument_group_name = "conversion"

    model: str | None = arg(None, "Gemma2 checkpoint directory (config.json + model*.safetensors)")
    output_dir: str | None = arg(None, "output directory for the ModernGPT2 checkpoint")
    dtype: str | None = arg(None, "cast the weights: bfloat16, float16 or float32 (default: keep the stored dtype)",
                            metavar="DTYPE")
    overwrite: bool = arg(False, "replace the output directory if it exists and is not empty")

    def __post_init__(self):
        if self.dtype is not None:
            self.dtype = dtype_name(self.dtype)

    def check_required(self):
        if self.model is None or self.output_dir is None:
            raise UserError("give the Gemma2 checkpoint and the output directory: convert-gemma2 SRC DST "
                            "(or --model SRC --output_dir DST)")


def main(argv: list[str]) -> int:
    (args,) = parse_command("moderngpt2 convert-gemma2", [ConvertArguments], argv,
                            description=__doc__.splitlines()[0],
                            positionals={"model": "the Gemma2 checkpoint (--model)",
                                         "output_dir": "the output directory (--output_dir)"})
    out = convert_gemma2(args.model, args.output_dir, DTYPES.get(args.dtype), args.overwrite)
    print(f"wrote ModernGPT2 checkpoint to {out}")
    return 0
