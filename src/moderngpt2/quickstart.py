"""``moderngpt2 quickstart``: the whole pipeline, end to end, in minutes on a laptop CPU.

The corpus is English prose that every Python installation carries: the docstrings of the standard library,
collected at run time (nothing is downloaded, nothing is copied into this repository), with a held-out part
for evaluation. Every later step is the subcommand a user would run by hand, run in this process through the
command line's dispatcher with the command line printed first, so the quickstart doubles as a worked example
of the flags:

    train-tokenizer -> pretokenize -> per-layer-vocab -> train (4 layers x 256, per-layer embeddings; the
    untrained model is evaluated first) -> evaluate -> generate -> loss-curve PNG -> summary

The model size and the number of steps were chosen by measurement: about one pass over the corpus, some 8
minutes of single-core CPU time, and the held-out perplexity falls from the untrained model's ~8,600 (about
that of a uniform guess among the 8,192 tokens) to ~150; a second pass mostly memorises. A GPU is used when
there is one (with a larger batch). ``--max_steps`` and ``--corpus_limit`` shorten the run for a smoke test.
"""

import contextlib
import io
import json
import math
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .arguments import arg
from .errors import UserError
from .fileio import atomic_write, write_json
from .metrics import perplexity
from .training.plots import plot_loss_curves, read_log_history

# A run writes these into its output directory, and `--overwrite` removes exactly these (and nothing else).
MARKER = ".moderngpt2-quickstart"
ARTEFACTS = (MARKER, "corpus", "tokenizer", "data", "per_layer_vocab.json", "train", "eval_after.json",
             "sample.txt", "loss_curve.png", "summary.json")

DEFAULT_MAX_STEPS = 300
TOKENIZER_VOCAB_SIZE = 8192
BLOCK_SIZE = 128
PER_LAYER_VOCAB_SIZE = 1024
PER_LAYER_STRATEGY = "frequency"
# 4 layers x 256 wide, 4 query heads sharing 2 key/value heads of 64; per-layer embeddings 64 wide.
MODEL_FLAGS = ["--n_layer", "4", "--n_embd", "256", "--n_head", "4", "--num_key_value_heads", "2",
               "--head_dim", "64", "--use-per-layer-embedding", "--per-layer-hidden-size", "64"]
LEARNING_RATE = "2e-3"
CPU_BATCH_SIZE, GPU_BATCH_SIZE = 16, 32
EVALUATIONS = 4  # held-out evaluations during training, besides the one of the untrained model
SAMPLE_PROMPT = "This module provides"
SAMPLE_TOKENS = 60


@dataclass(frozen=True)
class Layout:
    """Where each artefact of a run lives, relative to the output directory as the user spelled it."""

    root: str

    def path(self, *parts) -> str:
        return os.path.join(self.root, *parts)

    @property
    def corpus(self):
        return self.path("corpus")

    @property
    def tokenizer(self):
        return self.path("tokenizer")

    @property
    def data(self):
        return self.path("data")

    @property
    def per_layer_vocab(self):
        return self.path("per_layer_vocab.json")

    @property
    def train(self):
        return self.path("train")

    @property
    def model(self):
        return self.path("train", "final")

    @property
    def trainer_state(self):
        return self.path("train", "trainer_state.json")

    @property
    def tensorboard(self):
        return self.path("train", "runs")

    @property
    def eval_after(self):
        return self.path("eval_after.json")

    @property
    def sample(self):
        return self.path("sample.txt")

    @property
    def loss_curve(self):
        return self.path("loss_curve.png")

    @property
    def summary(self):
        return self.path("summary.json")


@dataclass
class QuickstartArguments:
    """Where the run goes, its seed, and how to shorten it for a smoke test."""

    _argument_group_name = "quickstart"

    output_dir: str = arg("quickstart_output", "where everything goes")
    overwrite: bool = arg(False, "replace the output of an earlier quickstart run in --output_dir")
    seed: int = arg(0, "seed of the held-out split, training and sampling (default: 0)")
    max_steps: int = arg(DEFAULT_MAX_STEPS, "training steps (fewer for a smoke run)")
    corpus_limit: int | None = arg(
        None, "keep only the first N training documents (and a twentieth as many held-out ones), for a smoke run")

    def __post_init__(self):
        if self.max_steps < 1:
            raise UserError(f"--max_steps {self.max_steps}: must be at least 1")
        if self.corpus_limit is not None and self.corpus_limit < 20:
            raise UserError(f"--corpus_limit {self.corpus_limit}: keep at least 20 documents")


# ----------------------------------------------------------------------------------------------- plumbing


def prepare_output_dir(root: str, overwrite: bool) -> None:
    """Refuse a directory that holds anything but an earlier quickstart run; clear that one on --overwrite."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise UserError(f"--output_dir {root} is a file; choose a directory")
    if os.path.isdir(root) and os.listdir(root):
        if not os.path.exists(os.path.join(root, MARKER)):
            raise UserError(f"--output_dir {root} is not empty and was not written by `moderngpt2 quickstart`; "
                            "choose a new or empty directory")
        if not overwrite:
            raise UserError(f"--output_dir {root} holds an earlier quickstart run; pass --overwrite to replace it "
                            "or choose another --output_dir")
        for name in ARTEFACTS:
            path = os.path.join(root, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, MARKER), "w", encoding="utf-8") as handle:
        handle.write("written by `moderngpt2 quickstart`; `moderngpt2 quickstart --overwrite` may replace this "
                     "directory's quickstart files\n")


class Stages:
    """Numbered stage headers with the equivalent command line, and the time each stage took."""

    def __init__(self, total: int):
        self.total, self.index, self.seconds, self.commands = total, 0, {}, []

    @contextlib.contextmanager
    def stage(self, title: str, command: list[str] | None = None):
        self.index += 1
        print(f"\n[{self.index}/{self.total}] {title}", flush=True)
        if command:
            line = shlex.join(["moderngpt2", *command])
            self.commands.append(line)
            print(f"  $ {line}", flush=True)
        start = time.perf_counter()
        yield
        self.seconds[title] = round(time.perf_counter() - start, 1)
        print(f"  ({self.seconds[title]:.0f}s)", flush=True)


class Commands:
    """Runs `moderngpt2` command lines in this process through `run_cli` (the CLI's dispatcher, handed in by the
    command above this library); a non-zero status stops the quickstart."""

    def __init__(self, run_cli: Callable[[list[str]], int]):
        self.run_cli = run_cli

    def __call__(self, argv: list[str]) -> None:
        status = self.run_cli(argv)
        if status:
            raise UserError(f"`moderngpt2 {argv[0]}` stopped with status {status}")


class _Tee(io.TextIOBase):
    """Shows what is written and keeps a copy (the sample streams to the terminal and into a file)."""

    def __init__(self, stream):
        self.stream, self.parts = stream, []

    def write(self, text):
        self.stream.write(text)
        self.parts.append(text)
        return len(text)

    def flush(self):
        self.stream.flush()


def format_seconds(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


# ----------------------------------------------------------------------------------------------- stages


def build_corpus(layout: Layout, seed: int, limit: int | None) -> dict:
    """The docstring corpus, optionally cut to its first `limit` training documents (a smoke run)."""
    from .data.stdlib_corpus import build_stdlib_corpus

    train, validation = build_stdlib_corpus(layout.corpus, validation_fraction=0.05, seed=seed)
    if limit is not None:
        _keep_first_lines(train, limit)
        _keep_first_lines(validation, max(1, limit // 20))
    counts = {}
    for split, path in (("train", train), ("validation", validation)):
        with open(path, encoding="utf-8") as handle:
            counts[split] = sum(1 for _ in handle)
    print(f"  {counts['train']:,} training and {counts['validation']:,} held-out docstrings in {layout.corpus}")
    return {"train": train, "validation": validation, "documents": counts}


def _keep_first_lines(path: str, count: int) -> None:
    with open(path, encoding="utf-8") as handle:
        lines = [line for _, line in zip(range(count), handle)]
    with atomic_write(path) as handle:
        handle.writelines(lines)


def train_argv(layout: Layout, max_steps: int, seed: int, on_gpu: bool) -> list[str]:
    """`moderngpt2 train` flags: the model, per-layer embeddings, evaluation from step 0, no checkpoints."""
    argv = ["train", "--tokenizer_path", layout.tokenizer, "--pre_tokenized_dataset_path", layout.data,
            "--output_dir", layout.train, *MODEL_FLAGS, "--per-layer-vocab-file", layout.per_layer_vocab,
            "--max_steps", str(max_steps), "--learning_rate", LEARNING_RATE,
            "--per_device_train_batch_size", str(GPU_BATCH_SIZE if on_gpu else CPU_BATCH_SIZE),
            "--per_device_eval_batch_size", "32", "--logging_steps", str(max(1, max_steps // 40)),
            "--eval_on_start", "--eval_steps", str(max(1, math.ceil(max_steps / EVALUATIONS))),
            "--save_strategy", "no", "--seed", str(seed)]
    if on_gpu and torch.cuda.is_bf16_supported():
        argv.append("--bf16")
    return argv


def untrained_perplexity(history: list[dict]) -> float:
    """The held-out perplexity the Trainer measured at step 0 (`--eval_on_start`), before any update."""
    for entry in history:
        if entry.get("step") == 0 and "eval_loss" in entry:
            return perplexity(entry["eval_loss"])
    raise UserError("the training log has no evaluation at step 0")


def generate_sample(layout: Layout, argv: list[str], run_command: Commands) -> str:
    """Run `moderngpt2 generate`, showing the text as it comes and saving it to sample.txt."""
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        run_command(argv)
    sample = "".join(tee.parts).strip()
    print()
    with open(layout.sample, "w", encoding="utf-8") as handle:
        handle.write(sample + "\n")
    return sample


# ----------------------------------------------------------------------------------------------- the run


def next_commands(layout: Layout) -> list[str]:
    q = shlex.quote
    return [
        f'moderngpt2 generate --model {q(layout.model)} --prompt "Return the number of" --max_new_tokens 80',
        f"moderngpt2 evaluate --model {q(layout.model)} --input {q(layout.data)}",
        f"tensorboard --logdir {q(layout.tensorboard)}",
        f"moderngpt2 info --model {q(layout.model)}",
    ]


def print_summary(summary: dict, layout: Layout) -> None:
    before, after = summary["perplexity_before"], summary["perplexity_after"]
    print(f"\nQuickstart finished in {format_seconds(summary['wall_seconds'])} on {summary['device']}.")
    print(f"Held-out perplexity ({summary['eval_tokens']:,} tokens of docstrings never trained on): "
          f"{before:,.1f} before training -> {after:,.1f} after {summary['max_steps']} steps.\n")
    rows = [("corpus", layout.corpus), ("tokenizer", layout.tokenizer), ("pretokenized data", layout.data),
            ("per-layer vocabulary", layout.per_layer_vocab), ("model (final checkpoint)", layout.model),
            ("TensorBoard logs", layout.tensorboard), ("loss curve", layout.loss_curve),
            ("generated sample", layout.sample), ("summary", layout.summary)]
    width = max(len(name) for name, _ in rows)
    for name, path in rows:
        print(f"  {name:<{width}}  {path}")
    print("\nNext, try:")
    for command in summary["next_commands"]:
        print(f"  {command}")


def run(settings: QuickstartArguments, run_cli: Callable[[list[str]], int]) -> dict:
    """Every stage in turn, each a `moderngpt2` command line given to `run_cli`; the summary (also summary.json)."""
    run_command = Commands(run_cli)
    layout = Layout(settings.output_dir)
    prepare_output_dir(layout.root, settings.overwrite)
    on_gpu = torch.cuda.is_available()
    threads = torch.get_num_threads()
    device = torch.cuda.get_device_name() if on_gpu else f"CPU ({threads} thread{'s' if threads > 1 else ''})"
    start = time.perf_counter()
    stages = Stages(total=8)

    with stages.stage("Building an English corpus from the Python standard library's docstrings"):
        corpus = build_corpus(layout, settings.seed, settings.corpus_limit)

    argv = ["train-tokenizer", "--input", corpus["train"], "--output_dir", layout.tokenizer,
            "--vocab_size", str(TOKENIZER_VOCAB_SIZE)]
    with stages.stage("Training a byte-level BPE tokenizer", argv):
        run_command(argv)

    argv = ["pretokenize", "--tokenizer_path", layout.tokenizer, "--input", corpus["train"],
            "--eval_input", corpus["validation"], "--output_dir", layout.data, "--block_size", str(BLOCK_SIZE)]
    with stages.stage(f"Pretokenizing into blocks of {BLOCK_SIZE} tokens (held-out docstrings as validation)", argv):
        run_command(argv)

    argv = ["per-layer-vocab", "--tokenizer_path", layout.tokenizer, "--pre_tokenized_dataset_path", layout.data,
            "--per-layer-vocab-size", str(PER_LAYER_VOCAB_SIZE), "--per-layer-strategy", PER_LAYER_STRATEGY,
            "--output_file", layout.per_layer_vocab]
    with stages.stage("Building the per-layer vocabulary", argv):
        run_command(argv)

    argv = train_argv(layout, settings.max_steps, settings.seed, on_gpu)
    with stages.stage(f"Training on {device}, with per-layer embeddings (the untrained model is evaluated first)",
                      argv):
        run_command(argv)
        before = untrained_perplexity(read_log_history(layout.trainer_state))

    argv = ["evaluate", "--model", layout.model, "--input", layout.data, "--output_json", layout.eval_after]
    with stages.stage("Evaluating the trained model on the held-out split", argv):
        run_command(argv)
        with open(layout.eval_after, encoding="utf-8") as handle:
            after = json.load(handle)
        print(f"  perplexity {before:,.1f} before training -> {after['perplexity']:,.1f} after")

    argv = ["generate", "--model", layout.model, "--prompt", SAMPLE_PROMPT, "--max_new_tokens", str(SAMPLE_TOKENS),
            "--seed", str(settings.seed)]
    with stages.stage("Generating a sample", argv):
        sample = generate_sample(layout, argv, run_command)

    with stages.stage("Plotting the loss curve"):
        plot_loss_curves(layout.trainer_state, layout.loss_curve,
                         title="Quickstart: 4 x 256 ModernGPT2 with per-layer embeddings")
        print(f"  wrote {layout.loss_curve}")

    summary = {
        "wall_seconds": round(time.perf_counter() - start, 1), "device": device, "max_steps": settings.max_steps,
        "corpus_documents": corpus["documents"], "perplexity_before": before,
        "perplexity_after": after["perplexity"], "eval_tokens": after["tokens"], "sample": sample,
        "stage_seconds": stages.seconds, "commands": stages.commands, "next_commands": next_commands(layout),
        "paths": {"corpus": layout.corpus, "tokenizer": layout.tokenizer, "data": layout.data,
                  "per_layer_vocab": layout.per_layer_vocab, "model": layout.model,
                  "tensorboard": layout.tensorboard, "loss_curve": layout.loss_curve, "sample": layout.sample},
    }
    write_json(layout.summary, summary)
    print_summary(summary, layout)
    return summary
