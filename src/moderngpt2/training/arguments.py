"""Command-line arguments of `moderngpt2 train`, as `HfArgumentParser` dataclasses.

Four groups: the model, the data, the per-layer embeddings, and `PretrainingArguments` (transformers'
`TrainingArguments` with the pretraining defaults of the design: lr 2.5e-4, cosine, 5% warmup, AdamW betas
(0.9, 0.95), weight decay 0.01, TensorBoard). Every flag is accepted as `--flag_name` and `--flag-name`.
One YAML or JSON file of arguments may stand anywhere on the line; flags override its values. The earlier
tools' spellings work too: `--deepspeed --deepspeed_config FILE`, `--deepspeed zero2` (a shipped config),
Megatron's `--micro-batch-size` / `--global-batch-size`.
"""

import json
import os
from dataclasses import dataclass, field, fields

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from ..argparsing import OneLineErrors, suggestion, unknown_flags_error
from ..errors import UserError
from .launch import set_single_process_environment


@dataclass
class ModelArguments:
    _argument_group_name = "model"

    model_size_name: str | None = field(
        default="small",
        metadata={"help": "Preset shape: tiny, small (12x768), medium (24x1024), large (36x1280), xl (48x1600)."},
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Continue from this checkpoint directory instead of a fresh model."}
    )
    tokenizer_path: str | None = field(
        default=None, metadata={"help": "Tokenizer directory (as written by `moderngpt2 train-tokenizer`)."}
    )
    vocab_file: str | None = field(default=None, metadata={"help": "GPT-2 style vocab.json (with --merge_file)."})
    merge_file: str | None = field(default=None, metadata={"help": "GPT-2 style merges.txt (with --vocab_file)."})
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Comma-separated config settings applied last, e.g. 'n_layer=2,n_embd=64,n_head=4'."},
    )
    n_layer: int | None = field(default=None, metadata={"help": "Number of layers (overrides the preset)."})
    n_embd: int | None = field(default=None, metadata={"help": "Hidden size (overrides the preset)."})
    n_head: int | None = field(default=None, metadata={"help": "Query heads (overrides the preset)."})
    num_key_value_heads: int | None = field(default=None, metadata={"help": "Key/value heads (GQA)."})
    head_dim: int | None = field(default=None, metadata={"help": "Size of one attention head."})
    n_inner: int | None = field(default=None, metadata={"help": "MLP width (default 4 * n_embd)."})
    rope_theta: float | None = field(default=None, metadata={"help": "RoPE base frequency (default 10000)."})
    attn_logit_softcapping: float | None = field(default=None, metadata={"help": "Attention logit softcap."})
    final_logit_softcapping: float | None = field(default=None, metadata={"help": "Final logit softcap."})
    sliding_window: int | None = field(default=None, metadata={"help": "Sliding window of the windowed layers."})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "eager, sdpa, flex_attention or flash_attention_2 (default: automatic)."}
    )
    tp_size: int = field(
        default=1,
        metadata={"help": "Tensor-parallel degree along the model's TP plan (under torchrun; world = tp x fsdp)."},
    )
    fsdp_size: int = field(
        default=1,
        metadata={"help": "FSDP2 degree applied by transformers when loading the model (works with gloo on CPU)."},
    )


@dataclass
class DataArguments:
    _argument_group_name = "data"

    pre_tokenized_dataset_path: str | None = field(
        default=None,
        metadata={"help": "Directory written by `moderngpt2 pretokenize`, or a Megatron prefix (`..._text_document`)."},
    )
    eval_dataset_path: str | None = field(
        default=None,
        metadata={"help": "Held-out data when it is not the validation split of --pre_tokenized_dataset_path."},
    )
    block_size: int | None = field(
        default=None, metadata={"help": "Tokens per training example; must match the data (default: the data's)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on at most this many blocks of the held-out split."}
    )
    verify_data: bool = field(
        default=False,
        metadata={"help": "Decode every block before training starts (damaged shards, foreign token ids); without "
                          "it each block is checked when it is read."},
    )
    document_mask: bool = field(
        default=False,
        metadata={"help": "Documents packed into one block (each closed by EOS) do not attend to each other."},
    )


@dataclass
class PerLayerArguments:
    _argument_group_name = "per-layer embeddings"

    use_per_layer_embedding: bool = field(default=False, metadata={"help": "Enable Gemma3n-style per-layer embeddings"})
    per_layer_vocab_file: str | None = field(
        default=None, metadata={"help": "Per-layer vocabulary JSON from `moderngpt2 per-layer-vocab`."}
    )
    per_layer_vocab_size: int | None = field(
        default=None,
        metadata={"help": "Rows of the per-layer table (default: the vocabulary file's size, else 10000 capped at the "
                          "main vocabulary)."},
    )
    per_layer_hidden_size: int = field(default=256, metadata={"help": "Per-layer embedding width d."})
    per_layer_combination_method: str = field(
        default="scaled_add", metadata={"help": "scaled_add (Gemma3n), concat or gated."}
    )
    per_layer_gate_activation: str = field(default="silu", metadata={"help": "silu, gelu, gelu_pytorch_tanh or relu."})
    per_layer_projection_dropout: float = field(default=0.0, metadata={"help": "Dropout inside each per-layer gate."})
    per_layer_learning_rate_scale: float = field(
        default=1.0, metadata={"help": "Multiplies the learning rate of every per-layer parameter."}
    )
    freeze_per_layer_embedding: bool = field(default=False, metadata={"help": "Do not train the per-layer table."})
    per_layer_data_path: str | None = field(
        default=None, metadata={"help": "Explicit per-layer id streams written beside the main tokens."}
    )
    log_per_layer_stats: bool = field(
        default=False, metadata={"help": "Log per-layer embedding norms, gated weights and gate contributions."}
    )
    log_per_layer_gradients: bool = field(default=False, metadata={"help": "Log per-layer gradient norms."})
    per_layer_stats_interval: int = field(default=100, metadata={"help": "Steps between per-layer statistics."})


@dataclass
class PretrainingArguments(TrainingArguments):
    """`TrainingArguments` with the defaults a pretraining run wants, plus throughput and safety settings."""

    learning_rate: float = field(default=2.5e-4, metadata={"help": "Peak learning rate of AdamW."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule after warmup."})
    warmup_steps: float = field(
        default=0.05, metadata={"help": "Warmup: a step count (>= 1) or a fraction of all steps (< 1)."}
    )
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2."})
    weight_decay: float = field(
        default=0.01, metadata={"help": "Weight decay of linear weights only (never norms, biases or embeddings)."}
    )
    report_to: str | None = field(default="tensorboard", metadata={"help": "tensorboard, wandb, ..., all or none."})
    logging_steps: float = field(default=10, metadata={"help": "Steps between log lines."})
    eval_strategy: str = field(default="steps", metadata={"help": "When to evaluate: steps, epoch or no."})
    eval_steps: float | None = field(default=500, metadata={"help": "Steps between evaluations."})
    prediction_loss_only: bool = field(default=True, metadata={"help": "Evaluation keeps the loss, not the logits."})
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every parameter takes part in each step, so DDP need not search."}
    )
    peak_tflops: float | None = field(
        default=None,
        metadata={"help": "Peak TFLOP/s of one device for MFU (default: 790 on H100/H200-class GPUs, else no MFU)."},
    )
    stop_on_nonfinite_loss: bool = field(
        default=True, metadata={"help": "Stop with a clear message when the loss becomes NaN or infinite."}
    )


@dataclass
class MegatronBatchArguments:
    """Megatron's batch flags, for users who bring their scripts: global = micro x accumulation x data-parallel."""

    _argument_group_name = "Megatron batch sizes"

    micro_batch_size: int | None = field(
        default=None, metadata={"help": "Megatron name of --per_device_train_batch_size."})
    global_batch_size: int | None = field(
        default=None,
        metadata={"help": "Sequences per optimizer step over all processes; sets --gradient_accumulation_steps to "
                          "global / (micro x processes), which must divide exactly."},
    )


ARGUMENT_CLASSES = (ModelArguments, DataArguments, PerLayerArguments, PretrainingArguments, MegatronBatchArguments)
CONFIG_FILE_SUFFIXES = (".yaml", ".yml", ".json")


class TrainArgumentParser(OneLineErrors, HfArgumentParser):
    """HfArgumentParser without abbreviations and with one-line errors."""


def build_parser() -> HfArgumentParser:
    return TrainArgumentParser(ARGUMENT_CLASSES, prog="moderngpt2 train", allow_abbrev=False)


def load_config_file(path: str) -> dict:
    """Read a YAML or JSON file of arguments (flag names as keys, dashes or underscores)."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such config file")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle) if path.endswith(".json") else yaml.safe_load(handle)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise UserError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: {error}".replace("\n", " "))
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of argument names to values")
    data = {key.replace("-", "_"): value for key, value in data.items()}
    known = {f.name for cls in ARGUMENT_CLASSES for f in fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        hints = "; ".join(f"{key}{suggestion('--' + key, build_parser())}" for key in unknown)
        raise UserError(f"{path}: unknown argument(s) {hints}; see 'moderngpt2 train --help'")
    return data


def has_accelerator() -> bool:
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or torch.backends.mps.is_available() or bool(xpu and xpu.is_available())


def _takes_value(parser, token: str) -> bool:
    """Whether `token` is a flag that consumes the next word (so a .json/.yaml after it is its value)."""
    if not token.startswith("--") or "=" in token:
        return False
    action = parser._option_string_actions.get(token)
    return action is not None and action.nargs not in (0, "?")


def take_config_file(argv: list[str], parser) -> tuple[list[str], str | None]:
    """The arguments without the YAML/JSON file of arguments (anywhere on the line), and that file."""
    for index, token in enumerate(argv):
        if (token.endswith(CONFIG_FILE_SUFFIXES) and not token.startswith("-")
                and not (index and _takes_value(parser, argv[index - 1]))):
            return argv[:index] + argv[index + 1:], token
    return argv, None


def _pop_option(argv: list[str], names: tuple[str, ...]) -> tuple[list[str], str | None, bool]:
    """(argv without the option, its value or None, whether it was present). A value is the next word unless
    that is another flag."""
    for index, token in enumerate(argv):
        name, equals, value = token.partition("=")
        if name in names:
            if equals:
                return argv[:index] + argv[index + 1:], value, True
            if index + 1 < len(argv) and not argv[index + 1].startswith("--"):
                return argv[:index] + argv[index + 2:], argv[index + 1], True
            return argv[:index] + argv[index + 1:], None, True
    return argv, None, False


def resolve_deepspeed_config(value: str) -> str:
    """A DeepSpeed config file, or the shipped one a short name (zero1, zero2, zero3, tp2) stands for."""
    from ..shipped_configs import DEEPSPEED_NAMES, shipped_path

    if os.path.isfile(value):
        return value
    if value in DEEPSPEED_NAMES:
        return shipped_path(value)
    raise UserError(f"--deepspeed {value}: no such file; give a DeepSpeed JSON config or a shipped one by name "
                    f"({', '.join(DEEPSPEED_NAMES)}; `moderngpt2 configs` lists them)")


def take_deepspeed(argv: list[str]) -> tuple[list[str], str | None]:
    """(argv without them, the config) for any spelling of the DeepSpeed flags:
    `--deepspeed FILE|NAME`, or the earlier tools' bare `--deepspeed` with `--deepspeed_config FILE`."""
    argv, config, _ = _pop_option(argv, ("--deepspeed_config", "--deepspeed-config"))
    argv, value, present = _pop_option(argv, ("--deepspeed",))
    value = value or config
    if present and value is None:
        raise UserError("--deepspeed needs a config: --deepspeed FILE, --deepspeed zero1|zero2|zero3|tp2, or "
                        "--deepspeed --deepspeed_config FILE")
    return argv, value


def apply_megatron_batch(training_args, megatron_args) -> None:
    """--micro-batch-size / --global-batch-size in the Trainer's terms; a global size must divide exactly."""
    if megatron_args.micro_batch_size is not None:
        training_args.per_device_train_batch_size = megatron_args.micro_batch_size
    if megatron_args.global_batch_size is None:
        return
    micro, world = training_args.per_device_train_batch_size, training_args.world_size
    steps, remainder = divmod(megatron_args.global_batch_size, micro * world)
    if remainder or steps < 1:
        raise UserError(f"--global-batch-size {megatron_args.global_batch_size} is not a multiple of micro batch "
                        f"{micro} x {world} process(es) = {micro * world}; choose a multiple of {micro * world}")
    training_args.gradient_accumulation_steps = steps


def parse_arguments(argv: list[str]):
    """Return (model, data, per_layer, training) arguments from flags and an optional YAML/JSON file of them.

    The file may stand anywhere on the line; flags win over the file's values wherever they are written.
    """
    parser = build_parser()
    if not has_accelerator():
        # Without this the Trainer treats CPU processes under torchrun as unrelated single processes.
        parser.set_defaults(use_cpu=True)
    argv, deepspeed = take_deepspeed(list(argv))
    argv, config_file = take_config_file(argv, parser)
    file_values = load_config_file(config_file) if config_file else {}
    deepspeed = deepspeed or file_values.pop("deepspeed", None)
    file_values.pop("deepspeed", None)
    parser.set_defaults(**file_values)  # file values become defaults, so every flag wins
    if deepspeed:
        if not isinstance(deepspeed, dict):
            deepspeed = resolve_deepspeed_config(str(deepspeed))
            argv += ["--deepspeed", deepspeed]
        else:
            parser.set_defaults(deepspeed=deepspeed)
        set_single_process_environment()  # one process without a launcher is rank 0 of 1
    try:
        *groups, remaining = parser.parse_args_into_dataclasses(
            args=argv, look_for_args_file=False, return_remaining_strings=True
        )
    except (ValueError, TypeError) as error:
        raise UserError(str(error).splitlines()[0]) from error
    if remaining:
        raise unknown_flags_error(remaining, parser)
    model_args, data_args, per_layer_args, training_args, megatron_args = groups
    apply_megatron_batch(training_args, megatron_args)
    return model_args, data_args, per_layer_args, training_args
