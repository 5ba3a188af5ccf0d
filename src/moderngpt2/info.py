"""``moderngpt2 info``: parameter counts and config of a preset or a checkpoint, computed from the config alone.

The counts are analytic (no weights are built), so ``info --model_size_name xl`` is instant; the tests check them
against the model instantiated on the meta device. "Embedding" means the token embedding table (plus the LM head
when it is not tied); the per-layer embedding table is listed on its own, and "non-embedding" excludes both.
"""

import argparse
import inspect
from dataclasses import dataclass
from pathlib import Path

from .argparsing import CommandParser
from .errors import UserError
from .jsonfile import read_json_object


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters of a ModernGPT2ForCausalLM, by part."""

    embedding: int  # token embedding table, plus the LM head when untied
    attention: int  # q/k/v/o projections of all layers
    mlp: int  # gate/up/down projections of all layers
    norms: int  # the four sandwich norms of every layer and the final norm
    per_layer_table: int = 0  # PLE: the V_p x (L * d) embedding table
    per_layer_projection: int = 0  # PLE: main-embedding projection, its norm and the combination weights
    per_layer_gates: int = 0  # PLE: gate, up projection and norm inside every layer

    @property
    def per_layer_total(self) -> int:
        return self.per_layer_table + self.per_layer_projection + self.per_layer_gates

    @property
    def total(self) -> int:
        return self.embedding + self.attention + self.mlp + self.norms + self.per_layer_total

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding - self.per_layer_table


def count_parameters(config) -> ParameterCounts:
    """Count the parameters a ``ModernGPT2Config`` implies, part by part, without building the model."""
    hidden, layers, vocab = config.n_embd, config.n_layer, config.vocab_size
    q_width = config.n_head * config.head_dim
    kv_width = config.num_key_value_heads * config.head_dim
    counts = dict(
        embedding=vocab * hidden * (1 if config.tie_word_embeddings else 2),
        attention=layers * (2 * hidden * q_width + 2 * hidden * kv_width),
        mlp=layers * 3 * hidden * config.n_inner,
        norms=(4 * layers + 1) * hidden,
    )
    if config.use_per_layer_embedding:
        d = config.per_layer_hidden_size
        combination = {"scaled_add": 0, "concat": layers * 2 * d * d, "gated": layers * d}
        counts.update(
            per_layer_table=config.per_layer_vocab_size * layers * d,
            per_layer_projection=hidden * layers * d + d + combination[config.per_layer_combination_method],
            per_layer_gates=layers * (2 * hidden * d + hidden),
        )
    return ParameterCounts(**counts)


def human(count: int) -> str:
    """12_345_678 -> '12.35M'."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return str(count)


def format_counts(counts: ParameterCounts) -> str:
    """The parameter report of one config, one part per line."""
    rows = [
        ("total", counts.total),
        ("embedding", counts.embedding),
        ("non-embedding" + (" (incl. PLE projection, gates)" if counts.per_layer_total else ""),
         counts.non_embedding),
        ("  attention", counts.attention),
        ("  mlp", counts.mlp),
        ("  norms", counts.norms),
    ]
    if counts.per_layer_total:
        rows += [
            (f"per-layer embeddings ({counts.per_layer_total / counts.total:.1%} of total)", counts.per_layer_total),
            ("  table", counts.per_layer_table),
            ("  projection", counts.per_layer_projection),
            ("  gates", counts.per_layer_gates),
        ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {count:>15,}  ({human(count)})" for name, count in rows)


def format_config(config) -> str:
    """The ModernGPT2 fields of a config (not transformers' generic ones), one per line."""
    fields = [name for name in inspect.signature(type(config).__init__).parameters if name not in ("self", "kwargs")]
    lines = []
    for name in fields:
        value = getattr(config, name)
        if name == "layer_types" and len(set(value)) == 1:
            value = f"{len(value)} x {value[0]}"
        lines.append(f"{name} = {value}")
    return "\n".join(lines)


def presets_table(overrides: dict) -> str:
    """A Markdown table of every preset, without and with per-layer embeddings (README material)."""
    from .configuration_moderngpt2 import MODEL_SIZE_PRESETS

    head = (
        "| preset | layers | n_embd | heads (q/kv) | n_inner | total | non-embedding | total with PLE | PLE share |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    rows = []
    for name in MODEL_SIZE_PRESETS:
        plain = make_config(model_size_name=name, overrides={**overrides, "use_per_layer_embedding": False})
        with_ple = make_config(model_size_name=name, overrides={**overrides, "use_per_layer_embedding": True})
        counts, ple = count_parameters(plain), count_parameters(with_ple)
        rows.append(
            f"| {name} | {plain.n_layer} | {plain.n_embd} | {plain.n_head}/{plain.num_key_value_heads} | "
            f"{plain.n_inner} | {human(counts.total)} | {human(counts.non_embedding)} | {human(ple.total)} | "
            f"{ple.per_layer_total / ple.total:.1%} |"
        )
    tied = "tied" if plain.tie_word_embeddings else "untied"
    note = (
        f"vocab_size {plain.vocab_size}, {tied} embeddings; PLE: d={with_ple.per_layer_hidden_size}, "
        f"V_p={with_ple.per_layer_vocab_size}, {with_ple.per_layer_combination_method}."
    )
    return "\n".join([head, *rows, "", note])


def make_config(model_size_name=None, model_path=None, overrides=None):
    """A ModernGPT2Config from a preset or a checkpoint/config directory, with command-line overrides applied."""
    from .configuration_moderngpt2 import ModernGPT2Config

    overrides = {key: value for key, value in (overrides or {}).items() if value is not None}
    try:
        if model_path is None:
            return ModernGPT2Config(model_size_name=model_size_name, **overrides)
        base = load_config_dict(Path(model_path))
        return ModernGPT2Config(**{**base, **overrides})
    except ValueError as error:
        raise UserError(str(error)) from None


def load_config_dict(path: Path) -> dict:
    """The config fields of a ModernGPT2 checkpoint, or of a Gemma2 one mapped to ModernGPT2's names."""
    config_path = path / "config.json" if path.is_dir() else path
    if not config_path.is_file():
        raise UserError(f"{config_path} does not exist; give a checkpoint directory or its config.json")
    raw = read_json_object(config_path, "checkpoint config")
    model_type = raw.get("model_type")
    if model_type == "gemma2":
        from .convert import moderngpt2_config_kwargs, read_gemma2_config

        return moderngpt2_config_kwargs(read_gemma2_config(config_path.parent))
    if model_type != "moderngpt2":
        raise UserError(f"{config_path}: model_type is {model_type!r}; expected 'moderngpt2' (or 'gemma2')")
    return {key: value for key, value in raw.items() if key not in ("model_type", "transformers_version", "auto_map")}


# Config fields that may be overridden on the command line: name -> type.
OVERRIDES = {
    "vocab_size": int,
    "n_positions": int,
    "n_embd": int,
    "n_layer": int,
    "n_head": int,
    "num_key_value_heads": int,
    "head_dim": int,
    "n_inner": int,
    "per_layer_vocab_size": int,
    "per_layer_hidden_size": int,
    "per_layer_combination_method": str,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = CommandParser(
        prog="moderngpt2 info",
        description="Parameter counts (total, embedding, non-embedding, per-layer embeddings) and config.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model_size_name", "--model-size-name", help="a preset: tiny, small, medium, large, xl")
    source.add_argument("--model", help="a checkpoint directory or config.json (ModernGPT2 or Gemma2)")
    source.add_argument("--all", action="store_true", help="a Markdown table of all presets, with and without PLE")
    for name, kind in OVERRIDES.items():
        flags = dict.fromkeys([f"--{name}", f"--{name.replace('_', '-')}"])
        parser.add_argument(*flags, dest=name, type=kind, help=f"override {name}")
    parser.add_argument(
        "--use_per_layer_embedding", "--use-per-layer-embedding", action="store_true", default=None,
        help="count with per-layer embeddings switched on",
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    overrides = {name: getattr(args, name) for name in [*OVERRIDES, "use_per_layer_embedding"]}
    if args.all:
        print(presets_table(overrides))
        return 0
    config = make_config(args.model_size_name, args.model, overrides)
    print(format_counts(count_parameters(config)))
    print()
    print(format_config(config))
    return 0
