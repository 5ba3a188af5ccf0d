"""Parameter counts and the config report of `moderngpt2 info`, computed from a config alone.

The counts are analytic (no weights are built), so ``info --model_size_name xl`` is instant; the tests check them
against the model instantiated on the meta device. "Embedding" means the token embedding table (plus the LM head
when it is not tied); the per-layer embedding table is listed on its own, and "non-embedding" excludes both.
"""

from dataclasses import dataclass

from .arguments import build_config
from .configuration_moderngpt2 import MODEL_SIZE_PRESETS


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
    lines = []
    for name in type(config).field_defaults():
        value = getattr(config, name)
        if name == "layer_types" and len(set(value)) == 1:
            value = f"{len(value)} x {value[0]}"
        lines.append(f"{name} = {value}")
    return "\n".join(lines)


def parameter_report(config) -> str:
    """The parameter counts of a config, a blank line, then its fields."""
    return f"{format_counts(count_parameters(config))}\n\n{format_config(config)}"


def presets_table(settings: dict) -> str:
    """A Markdown table of every preset, without and with per-layer embeddings (README material); `settings`
    (config fields) apply to every row."""
    head = (
        "| preset | layers | n_embd | heads (q/kv) | n_inner | total | non-embedding | total with PLE | PLE share |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    rows = []
    for name in MODEL_SIZE_PRESETS:
        plain = build_config(**{**settings, "model_size_name": name, "use_per_layer_embedding": False})
        with_ple = build_config(**{**settings, "model_size_name": name, "use_per_layer_embedding": True})
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
