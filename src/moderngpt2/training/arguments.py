"""Command-line arguments of `moderngpt2 train`, as `HfArgumentParser` dataclasses.

Four groups: the model, the data, the per-layer embeddings, and `PretrainingArguments` (transformers'
`TrainingArguments` with the pretraining defaults of the design: lr 2.5e-4, cosine, 5% warmup, AdamW betas
(0.9, 0.95), weight decay 0.01, TensorBoard). Every flag is accepted as `--flag_name` and `--flag-name`.
Instead of flags, one YAML or JSON file may hold the arguments; flags given after it override the file.
"""

import json
import os
from dataclasses import dataclass, field, fields

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from ..errors import UserError


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


ARGUMENT_CLASSES = (ModelArguments, DataArguments, PerLayerArguments, PretrainingArguments)
CONFIG_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def build_parser() -> HfArgumentParser:
    return HfArgumentParser(ARGUMENT_CLASSES, prog="moderngpt2 train")


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
        raise UserError(f"{path}: unknown argument(s) {', '.join(unknown)}; see 'moderngpt2 train --help'")
    return data


def has_accelerator() -> bool:
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or torch.backends.mps.is_available() or bool(xpu and xpu.is_available())


def parse_arguments(argv: list[str]):
    """Return (model, data, per_layer, training) arguments from flags, or a config file followed by flags."""
    parser = build_parser()
    if not has_accelerator():
        # Without this the Trainer treats CPU processes under torchrun as unrelated single processes.
        parser.set_defaults(use_cpu=True)
    argv = list(argv)
    if argv and argv[0].endswith(CONFIG_FILE_SUFFIXES) and not argv[0].startswith("-"):
        # File values become the parser's defaults, so flags written after the file still win.
        parser.set_defaults(**load_config_file(argv.pop(0)))
    try:
        model_args, data_args, per_layer_args, training_args = parser.parse_args_into_dataclasses(
            args=argv, look_for_args_file=False
        )
    except (ValueError, TypeError) as error:
        raise UserError(str(error).splitlines()[0]) from error
    return model_args, data_args, per_layer_args, training_args
