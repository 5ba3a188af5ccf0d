"""Behaviour pinned across restructurings: numbers recorded once (``GOLDEN_RECORD=1``) and asserted after.

- a fixed-seed tiny training run (tokenizer, pretokenized data, per-layer vocabulary, 6 steps with gated
  per-layer embeddings and evaluation): its files' bytes and every logged loss, gradient norm and eval loss;
- the logits of seed-0 tiny models with and without per-layer embeddings;
- ``info`` on a preset;
- every flag every command accepted (a renamed flag keeps its old spelling as an alias).

A difference here means behaviour moved; re-record only when the move is intended and say so in the commit.
"""

import argparse
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from train_assets import log_history, train_flags

from moderngpt2 import ModernGPT2Config, ModernGPT2ForCausalLM, cli

GOLDEN = Path(__file__).parent / "golden"
RECORD = os.environ.get("GOLDEN_RECORD") == "1"
COMMANDS = ["quickstart", "train-tokenizer", "pretokenize", "per-layer-vocab", "train", "evaluate", "generate",
            "info", "convert-gemma2", "export", "configs", "bench train", "bench generate", "bench pretokenize"]


def check(name: str, value):
    """Compare `value` with the recorded golden file `name` (or record it)."""
    path = GOLDEN / name
    if RECORD:
        path.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    assert value == json.loads(path.read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def run(per_layer_assets, tmp_path_factory):
    assets = per_layer_assets
    out = tmp_path_factory.mktemp("golden_run") / "out"
    flags = train_flags(assets, out, "--use-per-layer-embedding", "--per-layer-hidden-size", "8",
                        "--per-layer-vocab-file", str(assets["per_layer_vocab"]),
                        "--per-layer-combination-method", "gated", "--max_steps", "6", "--eval_strategy", "steps",
                        "--eval_steps", "3", "--learning_rate", "3e-3")
    assert cli.main(["train", *flags]) == 0
    return assets, out


def test_pipeline_files_are_byte_identical(run):
    assets, out = run
    files = {
        "tokenizer.json": assets["tokenizer"] / "tokenizer.json",
        "per_layer_vocab.json": assets["per_layer_vocab"],
        "config.json": out / "final" / "config.json",
    }
    files.update({f"data/{p.relative_to(assets['data'])}": p for p in sorted(assets["data"].rglob("*.parquet"))})
    manifest = json.loads((assets["data"] / "manifest.json").read_text())
    for key in ("inputs", "settings_hash"):  # both hold the corpus's temporary path
        manifest.pop(key)
    check("pipeline_files.json", {name: sha256(path) for name, path in files.items()} | {"manifest": manifest})


def test_training_numbers_are_unchanged(run):
    _, out = run
    keys = ("loss", "grad_norm", "learning_rate", "eval_loss", "eval_perplexity")
    history = [{k: entry[k] for k in keys if k in entry} | {"step": entry["step"]}
               for entry in log_history(out) if any(k in entry for k in keys)]
    check("train_history.json", history)


@pytest.mark.parametrize("per_layer", [False, True], ids=["plain", "per_layer"])
def test_seeded_model_logits_are_unchanged(per_layer):
    torch.manual_seed(0)
    config = ModernGPT2Config.from_dict(dict(
        vocab_size=320, n_layer=2, n_embd=64, n_head=4, num_key_value_heads=2, head_dim=16, n_inner=128,
        use_per_layer_embedding=per_layer, per_layer_hidden_size=8, per_layer_vocab_size=48))
    model = ModernGPT2ForCausalLM(config).eval()
    ids = torch.arange(24).reshape(2, 12) * 13 % 320
    with torch.no_grad():
        logits = model(ids).logits.double()
    check(f"logits_{'per_layer' if per_layer else 'plain'}.json",
          {"sum": logits.sum().item(), "abs_sum": logits.abs().sum().item(), "first": logits[0, 0, :8].tolist(),
           "last": logits[-1, -1, -8:].tolist()})


def test_info_report_is_unchanged(capsys):
    assert cli.main(["info", "--model_size_name", "small"]) == 0
    check("info_small.json", capsys.readouterr().out.splitlines())


class _Captured(Exception):
    pass


def accepted_flags(command: str) -> set[str]:
    """Every option string the parser of `command` knows, captured from the parser the command builds."""
    seen = set()
    original = argparse.ArgumentParser.parse_known_args

    def capture(parser, args=None, namespace=None):
        seen.update(option for option in parser._option_string_actions if option.startswith("--"))
        raise _Captured

    argparse.ArgumentParser.parse_known_args = capture
    try:
        cli.main([*command.split(), "--output_dir", "unused"])
    except _Captured:
        pass
    finally:
        argparse.ArgumentParser.parse_known_args = original
    return seen


@pytest.mark.parametrize("command", COMMANDS)
def test_every_recorded_flag_is_still_accepted(command):
    recorded = set(json.loads((GOLDEN / "command_flags.json").read_text())[command])
    assert recorded - accepted_flags(command) == set()
