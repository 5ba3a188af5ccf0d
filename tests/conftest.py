"""Shared test settings: deterministic, one torch thread (tiny models run faster so on CI's two cores), a `gpu` marker."""

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


sys.path.insert(0, str(Path(__file__).parent / "workers"))  # helpers the tests and their subprocesses share


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    """A tiny tokenizer, corpus and 32-token pretokenized data, made by the real commands (see
    workers/train_assets.py). Never modified: a test that damages something works on its own copy."""
    from train_assets import build_assets

    return build_assets(tmp_path_factory.mktemp("tiny_assets"))


@pytest.fixture(scope="session")
def per_layer_assets(tmp_path_factory):
    """`tiny_assets` plus a 48-row per-layer vocabulary and its explicit per-layer stream (never modified)."""
    from train_assets import build_assets

    return build_assets(tmp_path_factory.mktemp("per_layer_assets"), per_layer=True)


@pytest.fixture(scope="session")
def battery_run(tiny_assets, tmp_path_factory):
    """A finished 2-step tiny training run: OUTPUT/checkpoint-2 and OUTPUT/final (never modified)."""
    from battery import tiny_train_flags
    from moderngpt2.cli import main as cli

    out = tmp_path_factory.mktemp("battery_run") / "out"
    flags = tiny_train_flags(tiny_assets["tokenizer"], tiny_assets["data"], out, "--max_steps", "2",
                             "--save_strategy", "steps", "--save_steps", "2")
    assert cli(["train", *map(str, flags)]) == 0
    return out
