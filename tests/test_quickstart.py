"""`moderngpt2 quickstart`: a shortened run (same stages, 4 steps, 200 documents) and every artefact it promises."""

import glob
import json
import math
import os
import struct

import pytest
import torch

from moderngpt2.cli import main as cli_main
from moderngpt2.errors import UserError
from moderngpt2.quickstart import MARKER, SAMPLE_PROMPT, prepare_output_dir

SMOKE_STEPS, SMOKE_DOCUMENTS = 4, 200


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart") / "out"
    status = cli_main(["quickstart", "--output_dir", str(out), "--max_steps", str(SMOKE_STEPS),
                       "--corpus_limit", str(SMOKE_DOCUMENTS)])
    assert status == 0
    with open(out / "summary.json", encoding="utf-8") as handle:
        return out, json.load(handle)


@pytest.mark.slow
def test_corpus_tokenizer_data_and_per_layer_vocab(smoke_run):
    from transformers import AutoTokenizer

    from moderngpt2.data.loader import read_manifest
    from moderngpt2.data.per_layer_vocab import load_per_layer_vocab
    from moderngpt2.tokenization import tokenizer_fingerprint

    out, summary = smoke_run
    texts = {}
    for split, expected in (("train", SMOKE_DOCUMENTS), ("validation", SMOKE_DOCUMENTS // 20)):
        with open(out / "corpus" / f"stdlib_{split}.jsonl", encoding="utf-8") as handle:
            texts[split] = [json.loads(line)["text"] for line in handle]
        assert len(texts[split]) == expected
    assert not set(texts["train"]) & set(texts["validation"])
    assert summary["corpus_documents"] == {"train": SMOKE_DOCUMENTS, "validation": SMOKE_DOCUMENTS // 20}

    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    text = texts["validation"][0]
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text

    manifest = read_manifest(str(out / "data"))
    assert manifest["block_size"] == 128
    assert manifest["tokenizer_fingerprint"] == tokenizer_fingerprint(tokenizer)
    for split in ("train", "validation"):
        assert manifest["splits"][split]["blocks"] > 0
        for shard in manifest["splits"][split]["shards"]:
            assert os.path.isfile(out / "data" / shard)

    vocab = load_per_layer_vocab(str(out / "per_layer_vocab.json"))
    assert (vocab.strategy, vocab.per_layer_vocab_size) == ("frequency", 1024)
    assert vocab.tokenizer_fingerprint == tokenizer_fingerprint(tokenizer)
    assert len(vocab.token_map) == len(tokenizer)


@pytest.mark.slow
def test_final_checkpoint_has_per_layer_embeddings_and_reproduces_the_evaluation(smoke_run):
    from transformers import AutoModelForCausalLM

    from moderngpt2.data.loader import load_block_dataset
    from moderngpt2.data.per_layer_vocab import load_per_layer_vocab

    out, summary = smoke_run
    model = AutoModelForCausalLM.from_pretrained(out / "train" / "final").eval()
    config = model.config
    assert (config.n_layer, config.n_embd, config.use_per_layer_embedding) == (4, 256, True)
    assert config.per_layer_vocab_size == 1024 and config.per_layer_hidden_size == 64

    vocab = load_per_layer_vocab(str(out / "per_layer_vocab.json"))
    token_map = model.model.per_layer_token_map.tolist()
    assert token_map[: len(vocab.token_map)] == vocab.token_map
    assert set(token_map[len(vocab.token_map):]) <= {vocab.unk_id}  # rows of the rounded-up vocabulary

    # The perplexity the summary reports is the model's mean loss over the held-out blocks.
    validation = load_block_dataset(str(out / "data"), split="validation")
    blocks = torch.stack([validation[i]["input_ids"] for i in range(len(validation))])
    with torch.no_grad():
        loss = model(input_ids=blocks, labels=blocks).loss.item()
    assert summary["eval_tokens"] == blocks.shape[0] * (blocks.shape[1] - 1)
    assert math.exp(loss) == pytest.approx(summary["perplexity_after"], rel=1e-4)


@pytest.mark.slow
def test_perplexities_logs_plot_and_sample(smoke_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, summary = smoke_run
    before, after = summary["perplexity_before"], summary["perplexity_after"]
    assert math.isfinite(before) and math.isfinite(after)
    assert 1.0 < after < before
    # "Before" comes from the Trainer's evaluation at step 0, "after" from `moderngpt2 evaluate`: the same
    # metric, as the Trainer's evaluation of the final step shows.
    history = json.loads((out / "train" / "trainer_state.json").read_text())["log_history"]
    evaluations = [entry for entry in history if "eval_loss" in entry]
    assert evaluations[0]["step"] == 0 and evaluations[-1]["step"] == SMOKE_STEPS
    assert math.exp(evaluations[0]["eval_loss"]) == pytest.approx(before, rel=1e-9)
    assert math.exp(evaluations[-1]["eval_loss"]) == pytest.approx(after, rel=1e-4)

    events = glob.glob(str(out / "train" / "runs" / "*" / "events.out.tfevents.*"))
    assert events
    tags = set()
    for path in events:
        accumulator = EventAccumulator(path)
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"train/loss", "eval/loss"} <= tags

    with open(out / "loss_curve.png", "rb") as handle:
        head = handle.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    assert width >= 400 and height >= 300

    with open(out / "sample.txt", encoding="utf-8") as handle:
        sample = handle.read().strip()
    assert sample.startswith(SAMPLE_PROMPT) and len(sample) > len(SAMPLE_PROMPT)
    assert summary["sample"] == sample
    assert os.path.isfile(out / MARKER)
    assert any(command.startswith("tensorboard --logdir") for command in summary["next_commands"])


def test_refuses_a_directory_it_did_not_write(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert cli_main(["quickstart", "--output_dir", str(tmp_path), "--overwrite"]) == 2
    assert "not written by `moderngpt2 quickstart`" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_rerun_needs_overwrite_and_then_replaces_only_its_own_files(tmp_path):
    prepare_output_dir(str(tmp_path), overwrite=False)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "stale.bin").write_bytes(b"old")
    (tmp_path / "keep.txt").write_text("not a quickstart file")
    with pytest.raises(UserError, match="--overwrite"):
        prepare_output_dir(str(tmp_path), overwrite=False)
    prepare_output_dir(str(tmp_path), overwrite=True)
    assert not (tmp_path / "train").exists()
    assert (tmp_path / "keep.txt").read_text() == "not a quickstart file"
    assert (tmp_path / MARKER).is_file()


def test_bad_settings_are_one_line_errors(tmp_path, capsys):
    assert cli_main(["quickstart", "--output_dir", str(tmp_path / "a"), "--max_steps", "0"]) == 2
    assert "--max_steps 0" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert cli_main(["quickstart", "--output_dir", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
