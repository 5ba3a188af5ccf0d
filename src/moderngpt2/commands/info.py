"""Parameter counts (total, embedding, non-embedding, per-layer embeddings) and config of a preset or checkpoint.

    moderngpt2 info --model_size_name small [--use_per_layer_embedding]
    moderngpt2 info --model out/final
    moderngpt2 info --all
"""

from dataclasses import dataclass

from ..arguments import (
    ModelShapeArguments,
    PerLayerShapeArguments,
    arg,
    build_config,
    config_settings,
    parse_command,
)
from ..errors import UserError
from ..loading import checkpoint_config_fields
from ..parameter_counts import parameter_report, presets_table


@dataclass
class InfoArguments:
    """What to describe, besides a preset (--model_size_name)."""

    _argument_group_name = "info"

    model: str | None = arg(None, "a checkpoint directory or config.json (ModernGPT2 or Gemma2)")
    all: bool = arg(False, "a Markdown table of all presets, with and without PLE")


def main(argv: list[str]) -> int:
    info, shape, per_layer = parse_command(
        "moderngpt2 info", [InfoArguments, ModelShapeArguments, PerLayerShapeArguments], argv,
        description=__doc__.splitlines()[0],
        defaults={"use_per_layer_embedding": None})  # unset: the preset's or checkpoint's own setting
    chosen = [given for given in (shape.model_size_name and "--model_size_name", info.model and "--model",
                                  info.all and "--all") if given]
    if len(chosen) != 1:
        raise UserError("give one of --model_size_name, --model or --all"
                        + (f", not {' and '.join(chosen)} together" if chosen else ""))
    settings = config_settings(shape, per_layer)
    if info.all:
        print(presets_table(settings))
        return 0
    print(parameter_report(build_config(checkpoint_config_fields(info.model) if info.model else None, **settings)))
    return 0
