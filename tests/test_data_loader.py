"""The training-side Dataset: exact blocks by random access, DataLoader workers, and clear errors."""

import json
import os
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from moderngpt2 import cli
from moderngpt2.data.loader import check_tokenizer, load_block_dataset, read_manifest
from moderngpt2.errors import UserError
from moderngpt2.tokenization import load_tokenizer, save_tokenizer, train_tokenizer


def documents(count):
    rng = random.Random(3)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(2, 40))) for _ in range(count)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    save_tokenizer(train_tokenizer(documents(200), vocab_size=300, progress=False), str(root / "tok"))
    with open(root / "d.jsonl", "w") as f:
        for doc in documents(400):
            f.write(json.dumps({"text": doc}) + "\n")
    assert cli.main(["pretokenize", "--tokenizer_path", str(root / "tok"), "--input", str(root / "d.jsonl"),
                     "--output_path", str(root / "out"), "--block_size", "8", "--max_samples_per_shard", "100",
                     "--no_progress"]) == 0
    return root


def all_blocks(root):
    import pyarrow.parquet as pq

    manifest = read_manifest(str(root / "out"))
    rows = [np.array(pq.read_table(root / "out" / shard).column(0).to_pylist())
            for shard in manifest["splits"]["train"]["shards"]]
    return np.concatenate(rows)


def test_items_are_the_stored_blocks_in_any_order(data):
    dataset = load_block_dataset(str(data / "out"))
    expected = all_blocks(data)
    assert len(dataset) == expected.shape[0] == read_manifest(str(data / "out"))["splits"]["train"]["blocks"]
    assert dataset.block_size == 8
    order = list(range(len(dataset)))
    random.Random(0).shuffle(order)
    for i in order:
        item = dataset[i]
        assert set(item) == {"input_ids"} and item["input_ids"].dtype == torch.int64
        assert np.array_equal(item["input_ids"].numpy(), expected[i])
    assert np.array_equal(dataset[-1]["input_ids"].numpy(), expected[-1])
    with pytest.raises(IndexError):
        dataset[len(dataset)]
    assert len(load_block_dataset(str(data / "out"), "validation")) > 0


def test_dataloader_workers_see_the_same_blocks(data):
    dataset = load_block_dataset(str(data / "out"))
    serial = torch.cat([batch["input_ids"] for batch in DataLoader(dataset, batch_size=16)])
    parallel = torch.cat([batch["input_ids"] for batch in DataLoader(dataset, batch_size=16, num_workers=2)])
    assert torch.equal(serial, parallel) and serial.shape == (len(dataset), 8)


def test_loader_mistakes_are_one_line_errors(data, tmp_path):
    with pytest.raises(UserError, match=r"no pretokenized data at .*manifest\.json not found"):
        load_block_dataset(str(tmp_path))
    (tmp_path / ".pretokenize-progress-000000001.json").write_text("{}")
    with pytest.raises(UserError, match="is unfinished: pretokenize was interrupted"):
        load_block_dataset(str(tmp_path))
    with pytest.raises(UserError, match="pretokenized data not found"):
        load_block_dataset(str(tmp_path / "nothing"))
    with pytest.raises(UserError, match="holds blocks of 8 tokens, not 16"):
        load_block_dataset(str(data / "out"), block_size=16)
    with pytest.raises(UserError, match="no 'test' split"):
        load_block_dataset(str(data / "out"), "test")
    copy = tmp_path / "copy"
    os.makedirs(copy / "train")
    (copy / "manifest.json").write_bytes((data / "out" / "manifest.json").read_bytes())
    first = read_manifest(str(data / "out"))["splits"]["train"]["shards"][0]
    (copy / first).write_bytes((data / "out" / first).read_bytes()[:100])
    with pytest.raises(UserError, match=r"cannot read Parquet shard .*shard-00000\.parquet"):
        load_block_dataset(str(copy))
    other = tmp_path / "other-tok"
    save_tokenizer(train_tokenizer(documents(50), vocab_size=280, progress=False), str(other))
    check_tokenizer(read_manifest(str(data / "out")), load_tokenizer(str(data / "tok")), "out")
    with pytest.raises(UserError, match="pretokenized with another tokenizer"):
        check_tokenizer(read_manifest(str(data / "out")), load_tokenizer(str(other)), "out")
