"""Pretrain a ModernGPT2 model with the Hugging Face Trainer (what `moderngpt2 train` runs).

Runs as one process, or under `torchrun` / `accelerate launch` (DDP, DeepSpeed ZeRO through --deepspeed,
FSDP2 through an accelerate config or --fsdp_size, tensor parallelism through --tp_size); the Trainer reads
the launcher's environment. The model and tokenizer end up in OUTPUT/final and load with the Auto classes;
OUTPUT/loss_curve.png plots the train and eval loss.

    moderngpt2 train --tokenizer_path tok --pre_tokenized_dataset_path data --output_dir out \\
        --model_size_name small --max_steps 10000 --per_device_train_batch_size 16 --bf16
    moderngpt2 train run.yaml --max_steps 100      # arguments from a file, flags override it
"""

import logging
import os
import shutil
import sys

from transformers import AutoConfig, set_seed

from ..data.loader import DataFault
from ..devices import DTYPES, default_peak_tflops
from ..engines import check_engine_settings, ensure_deepspeed_comm, release_process_group
from ..errors import UserError, first_line
from ..fileio import make_directory, replace_directory, user_error_from
from ..flops import flops_per_token
from ..loading import check_model_directory
from ..tokenization import load_tokenizer, tokenizer_fingerprint
from .arguments import TrainArguments
from .callbacks import (
    OptimizerRecordCallback,
    PerLayerStatsCallback,
    ThroughputCallback,
)
from .checkpoints import discard_incomplete_checkpoints, last_complete_checkpoint, resolve_resume
from .data import load_training_data
from .final_checkpoint import finalize
from .model_setup import build_config, check_block_size, check_parallel_sizes, load_model, per_layer_token_map
from .plots import plot_loss_curves
from .trainer import NonFiniteLossError, PretrainingTrainer

logger = logging.getLogger("moderngpt2")


def configure_logging(training_args):
    """INFO on the main process, warnings only elsewhere, so N processes do not print N copies."""
    level = logging.INFO if training_args.process_index == 0 else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level, stream=sys.stderr)
    logger.setLevel(level)


def check_settings(model_args, per_layer_shape_args, per_layer_args, training_args):
    """Refuse flag combinations that cannot work, before anything is loaded."""
    vocab_size = per_layer_shape_args.per_layer_vocab_size
    if vocab_size is not None and vocab_size < 1:
        raise UserError(f"--per-layer-vocab-size must be at least 1, got {vocab_size}")
    if not per_layer_shape_args.use_per_layer_embedding:
        for flag in ("per_layer_vocab_file", "per_layer_data_path"):
            if getattr(per_layer_args, flag):
                raise UserError(f"--{flag.replace('_', '-')} needs --use-per-layer-embedding")
        if per_layer_args.log_per_layer_stats or per_layer_args.log_per_layer_gradients:
            raise UserError("--log-per-layer-stats / --log-per-layer-gradients need --use-per-layer-embedding")
    make_directory(training_args.output_dir, "--output_dir")
    sharded_while_loading = model_args.tp_size * model_args.fsdp_size > 1
    if sharded_while_loading:
        check_parallel_sizes(model_args)
    check_precision(training_args)
    check_engine_settings(training_args, sharded_while_loading)


def check_precision(training_args):
    """--bf16 / --fp16 only where the device computes in that precision (probed with one small matmul)."""
    import torch

    for flag, dtype in (("bf16", DTYPES["bfloat16"]), ("fp16", DTYPES["float16"])):
        if not getattr(training_args, flag):
            continue
        device = training_args.device
        if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise UserError(f"--{flag}: {torch.cuda.get_device_name(device)} has no bfloat16 support; use --fp16")
        try:
            with torch.autocast(device.type, dtype=dtype):
                torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
        except (RuntimeError, TypeError) as error:
            raise UserError(f"--{flag}: the {device.type} device cannot compute in {dtype} here "
                            f"({first_line(error)}); drop --{flag}") from None


def load_training_tokenizer(tokenizer_args, model_args):
    """The tokenizer named by the tokenizer flags, else the one saved with the checkpoint of --model."""
    if tokenizer_args.tokenizer_path or tokenizer_args.vocab_file or tokenizer_args.merge_file:
        return load_tokenizer(tokenizer_args.tokenizer_path, tokenizer_args.vocab_file, tokenizer_args.merge_file)
    if model_args.model:
        return load_tokenizer(model_args.model)
    raise UserError("pass --tokenizer_path (or --vocab_file and --merge_file)")


def load_per_layer_vocabulary(per_layer_args, tokenizer):
    if not per_layer_args.per_layer_vocab_file:
        return None
    from ..data.per_layer_vocab import load_per_layer_vocab

    vocab = load_per_layer_vocab(per_layer_args.per_layer_vocab_file)
    if vocab.tokenizer_fingerprint and vocab.tokenizer_fingerprint != tokenizer_fingerprint(tokenizer):
        raise UserError(
            f"{per_layer_args.per_layer_vocab_file}: built for a different tokenizer; rebuild it with "
            "`moderngpt2 per-layer-vocab` and the tokenizer you train with"
        )
    return vocab


def model_config(arguments, tokenizer, block_size, per_layer_vocab):
    """A fresh config, or the checkpoint's (whose shape the flags cannot change)."""
    model_args, per_layer_args = arguments.model, arguments.per_layer_shape
    if model_args.model is None:
        return build_config(arguments.shape, per_layer_args, tokenizer, block_size, per_layer_vocab)
    if os.path.isdir(model_args.model):
        check_model_directory(model_args.model)
    try:
        config = AutoConfig.from_pretrained(model_args.model)
    except (OSError, ValueError) as error:
        raise UserError(f"{model_args.model}: {first_line(error)}") from error
    if per_layer_args.use_per_layer_embedding != bool(getattr(config, "use_per_layer_embedding", False)):
        state = "has" if getattr(config, "use_per_layer_embedding", False) else "has no"
        raise UserError(f"{model_args.model} {state} per-layer embeddings; "
                        "--use-per-layer-embedding must agree with the checkpoint")
    if config.vocab_size < len(tokenizer):
        raise UserError(f"{model_args.model}: vocab_size {config.vocab_size} is smaller than the "
                        f"tokenizer's {len(tokenizer)} tokens")
    return config


def build_trainer(model, tokenizer, data, model_args, per_layer_args, training_args) -> PretrainingTrainer:
    world_size = training_args.world_size
    data_parallel = max(1, world_size // model_args.tp_size)
    tokens_per_step = (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                       * data_parallel * data.block_size)
    peak_tflops = training_args.peak_tflops or default_peak_tflops()
    throughput = ThroughputCallback(
        tokens_per_step=tokens_per_step,
        flops_per_token=flops_per_token(model.config, data.block_size),
        peak_flops_all_devices=peak_tflops * 1e12 * world_size if peak_tflops else None,
    )
    callbacks = [throughput, OptimizerRecordCallback()]
    stats = None
    if per_layer_args.log_per_layer_stats or per_layer_args.log_per_layer_gradients:
        stats = PerLayerStatsCallback(model, per_layer_args.per_layer_stats_interval,
                                      per_layer_args.log_per_layer_stats, per_layer_args.log_per_layer_gradients)
        callbacks.append(stats)
    trainer = PretrainingTrainer(
        model=model,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=data.collate,
        processing_class=tokenizer,
        callbacks=callbacks,
        per_layer_learning_rate_scale=per_layer_args.per_layer_learning_rate_scale,
        throughput=throughput,
    )
    if stats is not None:
        stats.log = trainer.log
    return trainer


def finish(trainer, data, output_dir: str, argv: list[str], data_path: str | None):
    """Evaluate the final weights (unless that just happened), keep the log history, save model and tokenizer
    (hub-ready: model card, generation config), plot the loss curve."""
    evaluated_last_step = any("eval_loss" in entry and entry.get("step") == trainer.state.global_step
                              for entry in trainer.state.log_history)
    if data.eval is not None and not evaluated_last_step:
        trainer.evaluate()
    trainer.save_state()  # OUTPUT/trainer_state.json: the whole log history, final evaluation included
    final_dir = os.path.join(output_dir, "final")
    staging = final_dir + ".partial"  # a full disk or a kill mid-save leaves no half-written final/
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)  # what an earlier, killed save left
    trainer.accelerator.wait_for_everyone()
    try:
        trainer.save_model(staging)
        trainer.accelerator.wait_for_everyone()
        if trainer.is_world_process_zero():
            held_out = f", {len(data.eval):,} held out" if data.eval is not None else ""
            finalize(staging, trainer.model, trainer.processing_class, argv,
                     f"{data_path} ({len(data.train):,} blocks of {data.block_size} tokens{held_out})",
                     trainer.throughput.tokens_per_step * trainer.state.global_step, trainer.state.global_step,
                     trainer.state.log_history)
    except Exception as error:  # see interrupted_save: writers raise all kinds for a full disk
        shutil.rmtree(staging, ignore_errors=True)
        raise user_error_from(error, staging) from None
    if trainer.is_world_process_zero():
        replace_directory(staging, final_dir)
        logger.info("final model and tokenizer saved to %s", final_dir)
        if any("loss" in entry for entry in trainer.state.log_history):
            curve = plot_loss_curves(trainer.state.log_history, os.path.join(output_dir, "loss_curve.png"),
                                     title=f"Training loss: {os.path.basename(os.path.normpath(output_dir))}")
            logger.info("loss curve written to %s", curve)


def interrupted_save(error: Exception, output_dir: str) -> Exception:
    """A filesystem fault while training (a checkpoint save): drop the half-written checkpoint, keep the rest.

    Any other error is returned unchanged, to be raised as it was."""
    problem = user_error_from(error, output_dir)
    if isinstance(problem, UserError):
        discarded = discard_incomplete_checkpoints(output_dir)
        last = last_complete_checkpoint(output_dir)
        note = f"; removed the half-written {', '.join(map(os.path.basename, discarded))}" if discarded else ""
        return UserError(f"{problem}{note}; last good checkpoint: {last or 'none yet'}")
    return problem


def train(arguments: TrainArguments, command_argv: list[str]) -> int:
    """Run one training from parsed settings; `command_argv` is recorded in the final model card."""
    training_args, model_args, per_layer_args = arguments.training, arguments.model, arguments.per_layer
    configure_logging(training_args)
    check_settings(model_args, arguments.per_layer_shape, per_layer_args, training_args)
    ensure_deepspeed_comm(training_args)
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    set_seed(training_args.seed)

    tokenizer = load_training_tokenizer(arguments.tokenizer, model_args)
    data = load_training_data(arguments.data, per_layer_args, tokenizer,
                              eval_wanted=training_args.eval_strategy != "no")
    per_layer_vocab = load_per_layer_vocabulary(per_layer_args, tokenizer)
    config = model_config(arguments, tokenizer, data.block_size, per_layer_vocab)
    check_block_size(config, data.block_size, model_args.model or "the model config")
    token_map = per_layer_token_map(per_layer_vocab, tokenizer, config) if per_layer_vocab else None
    model = load_model(model_args, per_layer_args, training_args.output_dir,
                       config if model_args.model is None else None, token_map)

    trainer = build_trainer(model, tokenizer, data, model_args, per_layer_args, training_args)
    try:
        trainer.train(resume_from_checkpoint=resume)
    except DataFault as error:
        # From a DataLoader worker the message arrives wrapped in the worker's traceback; its last line is ours.
        message = str(error).strip().splitlines()[-1].split("DataFault: ", 1)[-1]
        last = last_complete_checkpoint(training_args.output_dir)
        raise UserError(f"{message} (last good checkpoint: {last or 'none yet'})") from None
    except NonFiniteLossError as error:
        last = last_complete_checkpoint(training_args.output_dir)
        advice = (f"Last good checkpoint: {last}. Lower --learning_rate or check the data, then resume with "
                  "--resume_from_checkpoint last" if last else
                  "No checkpoint was saved yet: lower --learning_rate or check the data, then start again")
        raise UserError(f"{error}; training stopped before that update, nothing more was saved. {advice}") from error
    except UserError:
        raise
    except Exception as error:  # a checkpoint save that hit a full or read-only disk (whatever the writer raises)
        raise interrupted_save(error, training_args.output_dir) from None
    finish(trainer, data, training_args.output_dir, command_argv, arguments.data.pre_tokenized_dataset_path)
    release_process_group()
    return 0
