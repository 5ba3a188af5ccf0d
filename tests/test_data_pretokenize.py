"""pretokenize: exact blocks, deterministic bytes, a held-out split that never overlaps, resume after SIGKILL,
Megatron's indexed format byte for byte, and bad input that leaves nothing half-written."""

import filecmp
import json
import multiprocessing
import os
import random
import struct
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moderngpt2 import cli
from moderngpt2.data.layout import progress_files
from moderngpt2.data.loader import load_block_dataset
from moderngpt2.tokenization import load_tokenizer, save_tokenizer, train_tokenizer

WORDS = ("the quick brown fox jumps over a lazy dog while seven tired owls watch from an old oak tree near the "
         "quiet river bank and nobody says a word about it").split()


def make_documents(count, seed=0):
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60))) + "." for _ in range(count)]
    docs[3] = " ".join(WORDS * 12)  # one document much longer than a block: it must span several
    return docs


def write_jsonl(path, docs):
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(train_tokenizer(make_documents(300, seed=1), vocab_size=400, progress=False), str(path))
    return str(path)


def pretokenize(tokenizer_dir, inputs, out, *extra):
    return cli.main(["pretokenize", "--tokenizer_path", tokenizer_dir, "--input", *inputs, "--output_path", str(out),
                     "--no_progress", *extra])



def stream_of(out, split):
    dataset = load_block_dataset(str(out), split)
    return np.concatenate([dataset[i]["input_ids"].numpy() for i in range(len(dataset))]) if len(dataset) else \
        np.zeros(0, dtype=np.int64)


def documents_of(stream, eos):
    ends = np.flatnonzero(stream == eos) + 1
    return [tuple(doc[:-1]) for doc in np.split(stream, ends) if doc.size and doc[-1] == eos]


def reference_stream(tokenizer_dir, docs):
    tokenizer = load_tokenizer(tokenizer_dir)
    ids = []
    for doc in docs:
        ids += tokenizer.encode(doc, add_special_tokens=False) + [tokenizer.eos_token_id]
    return np.array(ids)


def test_blocks_are_documents_joined_with_eos_and_never_truncated(tmp_path, tokenizer_dir, capsys):
    docs = make_documents(120)
    out = tmp_path / "out"
    assert pretokenize(tokenizer_dir, [write_jsonl(tmp_path / "d.jsonl", docs)], out, "--block_size", "16",
                       "--max_samples_per_shard", "50", "--validation_split_percentage", "0") == 0
    assert "train: 120 documents" in capsys.readouterr().out
    expected = reference_stream(tokenizer_dir, docs)
    manifest = json.loads((out / "manifest.json").read_text())
    train = manifest["splits"]["train"]
    assert (train["documents"], train["tokens"], train["blocks"], train["dropped_tail_tokens"]) == \
        (120, expected.size, expected.size // 16, expected.size % 16)
    assert train["shards"] == [f"train/shard-{i:05d}.parquet" for i in range(-(-train["blocks"] // 50))]
    assert manifest["block_size"] == 16 and manifest["eos_token_id"] == 0
    assert manifest["vocab_size"] == len(load_tokenizer(tokenizer_dir))
    assert manifest["splits"]["validation"]["blocks"] == 0
    for i, shard in enumerate(train["shards"]):
        table = pq.read_table(out / shard)
        assert table.schema.field("input_ids").type == pa.list_(pa.int32())
        assert set(pc_lengths(table)) == {16}
        assert table.num_rows == min(50, train["blocks"] - 50 * i)
    got = stream_of(out, "train")
    assert np.array_equal(got, expected[:got.size])
    long_doc = load_tokenizer(tokenizer_dir).encode(docs[3], add_special_tokens=False)
    assert len(long_doc) > 3 * 16 and documents_of(got, 0)[3] == tuple(long_doc)


def pc_lengths(table):
    import pyarrow.compute as pc

    return pc.list_value_length(table.column(0)).to_pylist()


def test_a_distinct_bos_opens_every_document(tmp_path):
    docs = make_documents(30)
    tokenizer = train_tokenizer(docs, vocab_size=300, special_tokens=["<s>", "</s>"], bos_token="<s>",
                                eos_token="</s>", progress=False)
    save_tokenizer(tokenizer, str(tmp_path / "tok"))
    assert pretokenize(str(tmp_path / "tok"), [write_jsonl(tmp_path / "d.jsonl", docs)], tmp_path / "out",
                       "--block_size", "4", "--validation_split_percentage", "0") == 0
    expected = []
    for doc in docs:
        expected += [0] + tokenizer.encode(doc, add_special_tokens=False) + [1]
    got = stream_of(tmp_path / "out", "train")
    assert np.array_equal(got, np.array(expected[:got.size]))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (manifest["bos_token_id"], manifest["eos_token_id"]) == (0, 1)


def test_output_bytes_do_not_depend_on_num_proc_or_chunk_size(tmp_path, tokenizer_dir):
    source = write_jsonl(tmp_path / "d.jsonl", make_documents(200))
    pretokenize(tokenizer_dir, [source], tmp_path / "a", "--block_size", "32", "--max_samples_per_shard", "40")
    pretokenize(tokenizer_dir, [source], tmp_path / "b", "--block_size", "32", "--max_samples_per_shard", "40",
                "--num_proc", "2", "--chunk_bytes", "700")
    names = sorted(os.listdir(tmp_path / "a" / "train"))
    assert len(names) > 2 and names == sorted(os.listdir(tmp_path / "b" / "train"))
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b",
                                               ["manifest.json"] + [f"{s}/{n}" for s in ("train", "validation")
                                                                    for n in os.listdir(tmp_path / "a" / s)],
                                               shallow=False)
    assert mismatch == [] and errors == [] and len(match) > 3


def test_validation_split_is_by_document_and_never_overlaps(tmp_path, tokenizer_dir):
    docs = make_documents(300)
    docs += docs[:100]  # duplicates must land in the same split as their originals
    source = write_jsonl(tmp_path / "d.jsonl", docs)
    pretokenize(tokenizer_dir, [source], tmp_path / "out", "--block_size", "8", "--validation_split_percentage", "20")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    train, validation = (documents_of(stream_of(tmp_path / "out", s), 0) for s in ("train", "validation"))
    counts = manifest["splits"]
    assert counts["train"]["documents"] + counts["validation"]["documents"] == 400
    assert 40 <= counts["validation"]["documents"] <= 120
    assert set(train[1:-1]).isdisjoint(validation[1:-1])  # inner documents are whole; edges may be cut
    pretokenize(tokenizer_dir, [source], tmp_path / "seed1", "--block_size", "8", "--validation_split_percentage",
                "20", "--seed", "1")
    other = json.loads((tmp_path / "seed1" / "manifest.json").read_text())["splits"]["validation"]
    assert other["tokens"] != counts["validation"]["tokens"]


def test_eval_input_is_the_validation_split_and_its_copies_leave_training(tmp_path, tokenizer_dir):
    docs = make_documents(100)
    held_out = [docs[10], docs[20], "a sentence that only the evaluation file has."]
    train_file, eval_file = write_jsonl(tmp_path / "t.jsonl", docs), write_jsonl(tmp_path / "e.jsonl", held_out)
    assert pretokenize(tokenizer_dir, [train_file], tmp_path / "out", "--block_size", "4",
                       "--eval_input", eval_file) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["overlap_dropped_documents"] == 2 and manifest["validation"]["method"] == "eval_input"
    assert manifest["splits"]["train"]["documents"] == 98
    assert manifest["splits"]["validation"]["documents"] == 3
    validation = stream_of(tmp_path / "out", "validation")
    assert np.array_equal(validation, reference_stream(tokenizer_dir, held_out)[:validation.size])
    assert cli.main(["pretokenize", "--tokenizer_path", tokenizer_dir, "--input", train_file, "--output_path",
                     str(tmp_path / "x"), "--eval_input", eval_file, "--validation_split_percentage", "5"]) == 2


def _kill_repeatedly(argv, out, kills, rng):
    """Run the command in a forked process and SIGKILL it each time it has checkpointed again, until it
    has been killed ``kills`` times or finishes on its own; returns the number of kills."""
    hits = 0
    while hits < kills and not (out / "manifest.json").exists():
        before = progress_files(str(out))[-1:]
        process = multiprocessing.get_context("fork").Process(target=cli.main, args=(argv,))
        process.start()
        deadline = time.monotonic() + 60
        while process.is_alive() and time.monotonic() < deadline:
            if progress_files(str(out))[-1:] not in ([], before):
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.02))
        if process.is_alive():
            process.kill()  # SIGKILL: no cleanup of any kind runs
            hits += 1
        process.join()
    return hits


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["parquet", "megatron"])
def test_sigkill_at_any_point_then_rerun_gives_identical_bytes(tmp_path, tokenizer_dir, fmt):
    docs = make_documents(2500)
    eval_file = write_jsonl(tmp_path / "e.jsonl", make_documents(150, seed=9))
    flags = ["--tokenizer_path", tokenizer_dir, "--input", write_jsonl(tmp_path / "d.jsonl", docs), "--block_size",
             "16", "--max_samples_per_shard", "300", "--format", fmt, "--chunk_bytes", "500", "--no_progress"]
    if fmt == "parquet":
        flags += ["--eval_input", eval_file]
    assert cli.main(["pretokenize", *flags, "--output_path", str(tmp_path / "reference")]) == 0
    argv = ["pretokenize", *flags, "--output_path", str(tmp_path / "out")]
    assert _kill_repeatedly(argv, tmp_path / "out", 5, random.Random(0)) >= 3
    assert cli.main(argv) == 0
    comparison = filecmp.dircmp(tmp_path / "reference", tmp_path / "out")
    assert comparison.left_only == comparison.right_only == [] and comparison.diff_files == []
    for sub in comparison.subdirs.values():
        assert sub.left_only == sub.right_only == []
        match, mismatch, _ = filecmp.cmpfiles(sub.left, sub.right, sub.common_files, shallow=False)
        assert mismatch == [] and len(match) == len(sub.common_files) > 0
    _, mismatch, _ = filecmp.cmpfiles(tmp_path / "reference", tmp_path / "out", comparison.common_files, shallow=False)
    assert mismatch == []


def test_megatron_files_follow_the_documented_layout(tmp_path, tokenizer_dir):
    docs = make_documents(40)
    out = tmp_path / "mega"
    assert pretokenize(tokenizer_dir, [write_jsonl(tmp_path / "d.jsonl", docs)], out, "--format", "megatron",
                       "--block_size", "16", "--validation_split_percentage", "0") == 0
    tokenizer = load_tokenizer(tokenizer_dir)
    lengths = [len(tokenizer.encode(d, add_special_tokens=False)) + 1 for d in docs]
    idx = (out / "train_text_document.idx").read_bytes()
    assert idx[:9] == b"MMIDIDX\x00\x00"
    assert struct.unpack_from("<QBQQ", idx, 9) == (1, 8, len(docs), len(docs) + 1)  # version, uint16, S, D
    offset = 9 + 8 + 1 + 8 + 8
    assert np.frombuffer(idx, "<i4", len(docs), offset).tolist() == lengths
    pointers = np.frombuffer(idx, "<i8", len(docs), offset + 4 * len(docs))
    assert pointers.tolist() == (2 * np.concatenate([[0], np.cumsum(lengths)[:-1]])).tolist()
    assert np.frombuffer(idx, "<i8", len(docs) + 1, offset + 12 * len(docs)).tolist() == list(range(len(docs) + 1))
    assert len(idx) == offset + 12 * len(docs) + 8 * (len(docs) + 1)
    expected = reference_stream(tokenizer_dir, docs)
    assert np.array_equal(np.fromfile(out / "train_text_document.bin", dtype="<u2"), expected)
    # our loader cuts the stream into blocks, from the directory or from the bare prefix
    assert np.array_equal(stream_of(out, "train"), expected[:expected.size // 16 * 16])
    bare = load_block_dataset(str(out / "train_text_document"), block_size=10)
    assert len(bare) == expected.size // 10 and np.array_equal(bare[2]["input_ids"].numpy(), expected[20:30])


def test_megatron_core_reads_our_files(tmp_path, tokenizer_dir):
    indexed = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    docs = make_documents(30)
    out = tmp_path / "mega"
    pretokenize(tokenizer_dir, [write_jsonl(tmp_path / "d.jsonl", docs)], out, "--format", "megatron",
                "--validation_split_percentage", "0")
    dataset = indexed.IndexedDataset(str(out / "train_text_document"))
    tokenizer = load_tokenizer(tokenizer_dir)
    assert len(dataset) == len(docs)
    for i, doc in enumerate(docs):
        assert dataset[i].tolist() == tokenizer.encode(doc, add_special_tokens=False) + [0]
    assert dataset.document_indices.tolist() == list(range(len(docs) + 1))


def test_bad_record_stops_with_one_line_and_a_skip_rerun_resumes(tmp_path, tokenizer_dir, capsys):
    docs = make_documents(200)
    lines = [json.dumps({"text": d}) for d in docs]
    lines[150] = '{"text": "unfinished'
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    flags = ["--block_size", "8", "--max_samples_per_shard", "30", "--chunk_bytes", "500"]
    assert pretokenize(tokenizer_dir, [str(tmp_path / "d.jsonl")], tmp_path / "out", *flags) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "d.jsonl:151: malformed JSON" in err and "--on_bad_record skip" in err
    out = tmp_path / "out"
    assert not (out / "manifest.json").exists()
    leftovers = [n for _, _, files in os.walk(out) for n in files if n.endswith(".tmp")]
    assert leftovers == []
    for name in os.listdir(out / "train"):
        if name.endswith(".parquet"):
            assert pq.read_table(out / "train" / name).num_rows == 30  # every finished shard is whole
    assert pretokenize(tokenizer_dir, [str(tmp_path / "d.jsonl")], out, *flags, "--on_bad_record", "skip") == 0
    assert "resuming" in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped_records"] == {"malformed JSON": 1}
    assert pretokenize(tokenizer_dir, [str(tmp_path / "d.jsonl")], tmp_path / "fresh", *flags,
                       "--on_bad_record", "skip") == 0
    assert (tmp_path / "fresh" / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()
    for name in manifest["splits"]["train"]["shards"]:
        assert (tmp_path / "fresh" / name).read_bytes() == (out / name).read_bytes()


def test_worker_processes_report_bad_records_the_same_way(tmp_path, tokenizer_dir, capsys):
    (tmp_path / "d.jsonl").write_bytes(b'{"text": "fine"}\n' * 50 + b'{"text": "caf\xe9"}\n')
    assert pretokenize(tokenizer_dir, [str(tmp_path / "d.jsonl")], tmp_path / "out", "--num_proc", "2",
                       "--chunk_bytes", "100") == 2
    assert "d.jsonl:51: invalid UTF-8 (byte 0xe9" in capsys.readouterr().err


def test_c4_languages_through_pretokenize(tmp_path, tokenizer_dir):
    from test_data_sources import _c4_repository

    langs = _c4_repository(tmp_path / "c4")
    out = tmp_path / "out"
    assert cli.main(["pretokenize", "--tokenizer_path", tokenizer_dir, "--c4_langs", "en", "ja", "--c4_dataset",
                     str(tmp_path / "c4"), "--output_path", str(out), "--block_size", "2", "--chunk_bytes", "1",
                     "--validation_split_percentage", "0", "--max_input_lines_total", "4", "--no_progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"] == ["c4:en,ja"] and manifest["splits"]["train"]["documents"] == 4
    first_four = [langs["en"][0], langs["ja"][0], langs["en"][1], langs["ja"][1]]
    stream = reference_stream(tokenizer_dir, first_four)
    assert np.array_equal(stream_of(out, "train"), stream[:stream.size // 2 * 2])


def test_complete_output_is_kept_and_other_settings_need_overwrite(tmp_path, tokenizer_dir, capsys):
    source = write_jsonl(tmp_path / "d.jsonl", make_documents(50))
    out = tmp_path / "out"
    assert pretokenize(tokenizer_dir, [source], out, "--block_size", "8") == 0
    before = (out / "manifest.json").read_bytes()
    assert pretokenize(tokenizer_dir, [source], out, "--block_size", "8") == 0
    assert "nothing to do" in capsys.readouterr().err
    assert pretokenize(tokenizer_dir, [source], out, "--block_size", "16") == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "manifest.json").read_bytes() == before
    assert pretokenize(tokenizer_dir, [source], out, "--block_size", "16", "--overwrite") == 0
    assert json.loads((out / "manifest.json").read_text())["block_size"] == 16
    assert pretokenize(tokenizer_dir, [str(tmp_path / "missing.jsonl")], tmp_path / "o2") == 2
    assert "Input file not found" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("\n\n")
    assert pretokenize(tokenizer_dir, [str(tmp_path / "empty.jsonl")], tmp_path / "o3") == 2
    assert "no documents" in capsys.readouterr().err


def test_canonical_output_dir_a_file_of_arguments_and_the_library_call_give_the_same_bytes(tmp_path, tokenizer_dir):
    """--output_dir (canonical), --output_path (alias), a YAML file of arguments and `pretokenize(...)` called
    with the argument dataclasses all write the same shards."""
    from moderngpt2.arguments import SourceArguments, TokenizerArguments
    from moderngpt2.data.pretokenize import PretokenizeArguments
    from moderngpt2.data.pretokenize import pretokenize as pretokenize_library

    corpus = write_jsonl(tmp_path / "docs.jsonl", make_documents(120))
    assert pretokenize(tokenizer_dir, [corpus], tmp_path / "alias", "--block_size", "16") == 0
    assert cli.main(["pretokenize", "--tokenizer_path", tokenizer_dir, "--input", corpus, "--output_dir",
                     str(tmp_path / "canonical"), "--block_size", "16", "--no_progress"]) == 0
    (tmp_path / "args.yaml").write_text(f"tokenizer_path: {tokenizer_dir}\ninput: [{corpus}]\nblock-size: 16\n"
                                        f"output_dir: {tmp_path / 'from_file'}\nno_progress: true\n")
    assert cli.main(["pretokenize", str(tmp_path / "args.yaml")]) == 0
    pretokenize_library(TokenizerArguments(tokenizer_path=tokenizer_dir), SourceArguments(input=[corpus]),
                        PretokenizeArguments(output_dir=str(tmp_path / "library"), block_size=16, no_progress=True))
    shards = sorted(p.relative_to(tmp_path / "alias") for p in (tmp_path / "alias").rglob("*.parquet"))
    assert shards
    for other in ("canonical", "from_file", "library"):
        for shard in shards:
            assert (tmp_path / other / shard).read_bytes() == (tmp_path / "alias" / shard).read_bytes()


def test_json_inputs_in_a_list_of_inputs_are_inputs_not_a_file_of_arguments(tmp_path, tokenizer_dir):
    """`.json` is a JSON Lines suffix: among --input's values it is read as text, wherever it stands."""
    first = write_jsonl(tmp_path / "a.jsonl", make_documents(40, seed=1))
    second = write_jsonl(tmp_path / "b.json", make_documents(40, seed=2))
    assert pretokenize(tokenizer_dir, [first, second], tmp_path / "out", "--block_size", "16",
                       "--validation_split_percentage", "0") == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["inputs"] == [first, second] and manifest["splits"]["train"]["documents"] == 80
