"""The settings of `moderngpt2 train`: the shared argument groups plus train's own, parsed by `parse_command`.

Shared groups (moderngpt2.arguments): the tokenizer, the model shape (preset, fields, `--config_overrides`)
and the per-layer embedding fields, whose defaults are the model config's. Train's own: the checkpoint to
continue from and how to place it, the data, per-layer training settings, `PretrainingArguments`
(transformers' `TrainingArguments` with the pretraining defaults of the design: lr 2.5e-4, cosine, 5% warmup,
AdamW betas (0.9, 0.95), weight decay 0.01, TensorBoard) and Megatron's batch flags. The earlier tools'
DeepSpeed spellings work too: `--deepspeed --deepspeed_config FILE`, `--deepspeed zero2` (a shipped config).
"""

import os
from dataclasses import dataclass
from typing import NamedTuple

from transformers import TrainingArguments

from ..arguments import (
    ModelShapeArguments,
    PerLayerShapeArguments,
    TokenizerArguments,
    arg,
    build_parser,
    load_config_file,
    parse_command,
    take_config_file,
)
from ..engines import cpu_training_defaults, set_single_process_environment
from ..errors import UserError

PROG = "moderngpt2 train"
DEFAULT_MODEL_SIZE = "small"


@dataclass
class TrainModelArguments:
    """Which checkpoint to continue from, and how the model is placed on the processes."""

    _argument_group_name = "model"

    model: str | None = arg(None, "continue from this checkpoint directory instead of a fresh model",
                            aliases=("--model_name_or_path",))
    attn_implementation: str | None = arg(
        None, "eager, sdpa, flex_attention or flash_attention_2 (default: automatic)")
    tp_size: int = arg(1, "tensor-parallel degree along the model's TP plan (under torchrun; world = tp x fsdp)")
    fsdp_size: int = arg(1, "FSDP2 degree applied by transformers when loading the model (works with gloo on CPU)")


@dataclass
class DataArguments:
    _argument_group_name = "data"

    pre_tokenized_dataset_path: str | None = arg(
        None, "directory written by `moderngpt2 pretokenize`, or a Megatron prefix (`..._text_document`)")
    eval_dataset_path: str | None = arg(
        None, "held-out data when it is not the validation split of --pre_tokenized_dataset_path")
    block_size: int | None = arg(None, "tokens per training example; must match the data (default: the data's)")
    max_eval_samples: int | None = arg(None, "evaluate on at most this many blocks of the held-out split")
    verify_data: bool = arg(False, "decode every block before training starts (damaged shards, foreign token "
                                   "ids); without it each block is checked when it is read")
    document_mask: bool = arg(False, "documents packed into one block (each closed by EOS) do not attend to "
                                     "each other")


@dataclass
class PerLayerTrainingArguments:
    """How the per-layer embeddings are fed, trained and watched (their shape is in the per-layer group)."""

    _argument_group_name = "per-layer training"

    per_layer_vocab_file: str | None = arg(None, "per-layer vocabulary JSON from `moderngpt2 per-layer-vocab` "
                                                 "(its size is the default --per_layer_vocab_size)")
    per_layer_learning_rate_scale: float = arg(1.0, "multiplies the learning rate of every per-layer parameter")
    freeze_per_layer_embedding: bool = arg(False, "do not train the per-layer table")
    per_layer_data_path: str | None = arg(None, "explicit per-layer id streams written beside the main tokens")
    log_per_layer_stats: bool = arg(False, "log per-layer embedding norms, gated weights and gate contributions")
    log_per_layer_gradients: bool = arg(False, "log per-layer gradient norms")
    per_layer_stats_interval: int = arg(100, "steps between per-layer statistics")


@dataclass
class PretrainingArguments(TrainingArguments):
    """`TrainingArguments` with the defaults a pretraining run wants, plus throughput and safety settings."""

    learning_rate: float = arg(2.5e-4, "peak learning rate of AdamW")
    lr_scheduler_type: str = arg("cosine", "learning-rate schedule after warmup")
    warmup_steps: float = arg(0.05, "warmup: a step count (>= 1) or a fraction of all steps (< 1)")
    adam_beta2: float = arg(0.95, "AdamW beta2")
    weight_decay: float = arg(0.01, "weight decay of linear weights only (never norms, biases or embeddings)")
    report_to: str | None = arg("tensorboard", "tensorboard, wandb, ..., all or none")
    logging_steps: float = arg(10, "steps between log lines")
    eval_strategy: str = arg("steps", "when to evaluate: steps, epoch or no")
    eval_steps: float | None = arg(500, "steps between evaluations")
    prediction_loss_only: bool = arg(True, "evaluation keeps the loss, not the logits")
    ddp_find_unused_parameters: bool | None = arg(
        False, "every parameter takes part in each step, so DDP need not search")
    peak_tflops: float | None = arg(
        None, "peak TFLOP/s of one device for MFU (default: 790 on H100/H200-class GPUs, else no MFU)")
    stop_on_nonfinite_loss: bool = arg(True, "stop with a clear message when the loss becomes NaN or infinite")


@dataclass
class MegatronBatchArguments:
    """Megatron's batch flags, for users who bring their scripts: global = micro x accumulation x data-parallel."""

    _argument_group_name = "Megatron batch sizes"

    micro_batch_size: int | None = arg(None, "Megatron name of --per_device_train_batch_size")
    global_batch_size: int | None = arg(
        None, "sequences per optimizer step over all processes; sets --gradient_accumulation_steps to "
              "global / (micro x processes), which must divide exactly")


ARGUMENT_CLASSES = (TokenizerArguments, ModelShapeArguments, PerLayerShapeArguments, TrainModelArguments,
                    DataArguments, PerLayerTrainingArguments, PretrainingArguments, MegatronBatchArguments)


class TrainArguments(NamedTuple):
    """Every setting of one `moderngpt2 train` run, by group."""

    tokenizer: TokenizerArguments
    shape: ModelShapeArguments
    per_layer_shape: PerLayerShapeArguments
    model: TrainModelArguments
    data: DataArguments
    per_layer: PerLayerTrainingArguments
    training: PretrainingArguments


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


def parse_arguments(argv: list[str]) -> TrainArguments:
    """Every setting from flags and an optional YAML/JSON file of them (anywhere on the line; flags win).

    The file is read here rather than by `parse_command` because its `deepspeed` entry may be a shipped
    config's short name (or an inline mapping), resolved like the flag.
    """
    parser = build_parser(PROG, ARGUMENT_CLASSES, description=__doc__.splitlines()[0])
    defaults = {"model_size_name": DEFAULT_MODEL_SIZE, **cpu_training_defaults()}
    argv, deepspeed = take_deepspeed(list(argv))
    argv, config_file = take_config_file(argv, parser)
    if config_file:
        file_values = load_config_file(config_file, parser)
        deepspeed = deepspeed or file_values.pop("deepspeed", None)
        file_values.pop("deepspeed", None)
        defaults.update(file_values)  # defaults, so every flag wins
    if deepspeed:
        if isinstance(deepspeed, dict):
            defaults["deepspeed"] = deepspeed
        else:
            argv += ["--deepspeed", resolve_deepspeed_config(str(deepspeed))]
        set_single_process_environment()  # one process without a launcher is rank 0 of 1
    tokenizer, shape, per_layer_shape, model, data, per_layer, training, megatron = parse_command(
        PROG, ARGUMENT_CLASSES, argv, defaults=defaults, parser=parser)
    apply_megatron_batch(training, megatron)
    return TrainArguments(tokenizer, shape, per_layer_shape, model, data, per_layer, training)
