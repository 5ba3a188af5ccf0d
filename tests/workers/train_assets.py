"""Tiny training assets for the train/evaluate/generate tests, made with the real pipeline.

A seeded synthetic corpus (short English-like sentences), a byte-level BPE tokenizer trained on it by
`moderngpt2 train-tokenizer`, the corpus pretokenized by `moderngpt2 pretokenize` into 32-token blocks with
a validation split, and (on request) a per-layer vocabulary with its explicit per-layer id stream.
"""

import json
import os
import random
import sys
from pathlib import Path

SUBJECTS = ["the cat", "a dog", "the old man", "my sister", "the river", "a small bird", "the teacher", "our team"]
VERBS = ["sees", "likes", "follows", "paints", "finds", "remembers", "carries", "watches"]
OBJECTS = ["the moon", "a red ball", "the garden", "an open door", "the long road", "a quiet song", "the city"]
ENDINGS = [".", "!", " today.", " again.", " at night.", " in the rain."]

TINY_MODEL_FLAGS = ["--model_size_name", "tiny", "--config_overrides", "n_layer=2,n_embd=64,n_head=4,"
                    "num_key_value_heads=2,head_dim=16,n_inner=128"]
REPO_ROOT = Path(__file__).resolve().parents[2]


def synthetic_corpus(path: Path, documents: int = 600, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(documents):
            sentences = [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(ENDINGS)}"
                         for _ in range(rng.randint(2, 6))]
            handle.write(json.dumps({"text": " ".join(s.capitalize() for s in sentences)}) + "\n")
    return path


def build_assets(root: Path, block_size: int = 32, per_layer: bool = False) -> dict:
    """Paths of a tokenizer, pretokenized data and (per_layer) a per-layer vocabulary and stream under root."""
    from moderngpt2.cli import main as cli

    root = Path(root)
    corpus = synthetic_corpus(root / "corpus.jsonl")
    tokenizer = root / "tokenizer"
    data = root / "data"
    assert 0 == cli(["train-tokenizer", "--input", str(corpus), "--output_path", str(tokenizer), "--vocab_size", "320",
                       "--no_progress"])
    assert 0 == cli(["pretokenize", "--input", str(corpus), "--tokenizer_path", str(tokenizer), "--output_path", str(data),
                      "--block_size", str(block_size), "--validation_split_percentage", "10", "--no_progress"])
    assets = {"corpus": corpus, "tokenizer": tokenizer, "data": data}
    if per_layer:
        vocab = root / "per_layer_vocab.json"
        stream = root / "per_layer_stream"
        assert 0 == cli(["per-layer-vocab", "--tokenizer_path", str(tokenizer), "--pre_tokenized_dataset_path", str(data),
                              "--per-layer-vocab-size", "48", "--per-layer-strategy", "frequency",
                              "--output", str(vocab), "--per-layer-output-prefix", str(stream), "--no_progress"])
        assets.update(per_layer_vocab=vocab, per_layer_stream=stream)
    return assets


def train_flags(assets: dict, output_dir: Path, *extra: str) -> list[str]:
    """`moderngpt2 train` flags for a tiny, fast, deterministic run on the assets."""
    return ["--tokenizer_path", str(assets["tokenizer"]), "--pre_tokenized_dataset_path", str(assets["data"]),
            "--output_dir", str(output_dir), *TINY_MODEL_FLAGS, "--per_device_train_batch_size", "4",
            "--logging_steps", "1", "--report_to", "none", "--eval_strategy", "no", "--save_strategy", "no",
            "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--seed", "0", *extra]


def cli_env(**extra) -> dict:
    """Environment for a `moderngpt2` subprocess: one thread per process, offline, CPU DeepSpeed."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", DS_ACCELERATOR="cpu",
               TRANSFORMERS_NO_ADVISORY_WARNINGS="1")
    env.update(extra)
    return env


def torchrun_command(nproc: int, *args: str) -> list[str]:
    """`torchrun --standalone --nproc_per_node N -m moderngpt2.cli ARGS` with this interpreter."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "moderngpt2.cli", *args]


def log_history(output_dir: Path) -> list[dict]:
    """The run's log history, from the trainer_state.json `moderngpt2 train` writes at the end."""
    return json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]


def logged(output_dir: Path, key: str = "loss") -> dict[int, float]:
    """{step: value} of one logged quantity."""
    return {entry["step"]: entry[key] for entry in log_history(output_dir) if key in entry}
