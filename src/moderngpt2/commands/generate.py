"""Generate text from a checkpoint, streamed to the terminal as it is produced.

    moderngpt2 generate --model out/final --prompt "The meaning of" --max_new_tokens 60 --temperature 0.8
"""

from dataclasses import dataclass

from ..arguments import DeviceArguments, arg, parse_command
from ..frameworks import FrameworkArguments
from ..generate import Sampling, generate_text


@dataclass
class GenerateArguments:
    _argument_group_name = "generation"

    model: str = arg(help="model directory (OUTPUT/final of `moderngpt2 train`)")
    prompt: list[str] = arg(help="one or more prompts, each continued in turn")


def main(argv: list[str]) -> int:
    options, sampling, framework, device = parse_command(
        "moderngpt2 generate", [GenerateArguments, Sampling, FrameworkArguments, DeviceArguments], argv,
        description=__doc__.splitlines()[0])
    generate_text(options.model, options.prompt, sampling, framework=framework.framework, device=device.device,
                  dtype=device.dtype)
    return 0
