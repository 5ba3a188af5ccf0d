"""Export a ModernGPT2 checkpoint (without per-layer embeddings) as a transformers Gemma2 directory or a GGUF file.

The Gemma2 directory needs no remote code; the GGUF file runs in llama.cpp and Ollama.

    moderngpt2 export --format gemma2 SRC DST_DIR [--dtype bfloat16]
    moderngpt2 export --format gguf SRC OUT.gguf [--outtype q8_0]
"""

from dataclasses import dataclass

from ..arguments import arg, parse_command
from ..devices import DTYPES, dtype_name
from ..errors import UserError

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
# --dtype's long names, as the GGUF types of the same precision (--dtype was the GGUF type's first name).
GGUF_TYPE_OF_DTYPE = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}


@dataclass
class ExportArguments:
    _argument_group_name = "export"

    format: str | None = arg(None, "output format", choices=("gemma2", "gguf"))
    model: str | None = arg(None, "ModernGPT2 checkpoint directory (e.g. a training run's final/)")
    output_dir: str | None = arg(None, "gemma2: the output directory")
    output_file: str | None = arg(None, "gguf: the output file (OUT.gguf)", aliases=("--output",))
    dtype: str | None = arg(None, "gemma2: cast the weights to bfloat16, float16 or float32 (default: keep the "
                                  "stored dtype)", metavar="DTYPE")
    outtype: str | None = arg(None, f"gguf: tensor type, one of {', '.join(GGUF_TYPES)} (default f32)",
                              metavar="TYPE")
    overwrite: bool = arg(False, "replace the output if it exists")

    def check_required(self):
        """A positional DST is the output directory of gemma2 and the output file of gguf."""
        if self.format is None:
            raise UserError("give --format gemma2 or --format gguf")
        if self.format == "gguf":
            if self.output_dir is not None and self.output_file not in (None, self.output_dir):
                raise UserError("--format gguf writes one file: give DST or --output_file, not both")
            self.output_file, self.output_dir = self.output_file or self.output_dir, None
        elif self.output_file is not None:
            raise UserError("--output_file is the output of --format gguf; --format gemma2 writes --output_dir (DST)")
        if self.model is None or (self.output_dir or self.output_file) is None:
            raise UserError(f"give the checkpoint and the output: export --format {self.format} SRC DST")

    def gemma2_dtype(self):
        """The torch dtype to cast to (None: keep the stored one)."""
        if self.outtype is not None:
            raise UserError("--outtype is a GGUF tensor type; for --format gemma2 use --dtype")
        if self.dtype is None:
            return None
        try:
            return DTYPES[dtype_name(self.dtype)]
        except UserError:
            raise UserError(f"--dtype {self.dtype} is not available for --format gemma2; "
                            f"choose one of {', '.join(DTYPES)}") from None

    def gguf_type(self) -> str:
        """--outtype, or --dtype in either its GGUF or its long spelling; f32 when neither is given."""
        chosen, flag = (self.outtype, "--outtype") if self.outtype is not None else (self.dtype, "--dtype")
        if chosen is None:
            return "f32"
        chosen = GGUF_TYPE_OF_DTYPE.get(chosen.lower(), chosen.lower())
        if chosen not in GGUF_TYPES:
            raise UserError(f"{flag} {chosen} is not available for --format gguf; choose one of {', '.join(GGUF_TYPES)}")
        return chosen


def main(argv: list[str]) -> int:
    (args,) = parse_command("moderngpt2 export", [ExportArguments], argv, description=__doc__.splitlines()[0],
                            positionals={"model": "the checkpoint (--model)",
                                         "output_dir": "gemma2: the output directory; gguf: the output file"})
    if args.format == "gemma2":
        from ..export.gemma2 import export_gemma2

        out = export_gemma2(args.model, args.output_dir, args.gemma2_dtype(), args.overwrite)
        print(f"wrote Gemma2ForCausalLM directory to {out}")
        return 0
    from ..export.gguf import export_gguf

    out = export_gguf(args.model, args.output_file, args.gguf_type(), args.overwrite)
    print(f"wrote GGUF file (llama.cpp architecture gemma2) to {out}")
    return 0
