"""Bad inputs and faults of the data commands (train-tokenizer, pretokenize, per-layer-vocab, the data a run
reads), each through the real command line in a subprocess: exit status 2 (130 after Ctrl-C), one line on
stderr naming the file or flag, no traceback, and nothing already written lost or left half-written."""

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from battery import (
    error_line,
    partial_files,
    remount,
    run_cli,
    small_tmpfs,
    snapshot,
    start_cli,
    tiny_train_flags,
)
from train_assets import synthetic_corpus


def pretokenize(assets, inputs, out, *extra):
    return run_cli("pretokenize", "--input", *inputs, "--tokenizer_path", assets["tokenizer"], "--output_path", out,
                   "--block_size", "32", "--no_progress", *extra)


# ----------------------------------------------------------------------------------------------- input text


def _write(path: Path, data) -> Path:
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path


INPUT_CASES = {
    # case: (file name, content, words the error names besides the file)
    "malformed_json": ("bad.jsonl", '{"text": "fine"}\n{"text": "broken\n', [":2", "JSON"]),
    "missing_text_field": ("nofield.jsonl", '{"body": "no text field here"}\n', ["text"]),
    "empty_file": ("empty.jsonl", "", []),
    "only_empty_documents": ("blank.jsonl", '{"text": ""}\n{"text": "   "}\n', []),
    "invalid_utf8": ("latin1.txt", b"caf\xe9 au lait\n", ["UTF-8"]),
    "binary_file": ("image.txt", bytes(range(256)) * 8, []),
}


@pytest.mark.parametrize("case", INPUT_CASES)
def test_bad_input_text_is_one_line(tiny_assets, tmp_path, case):
    name, content, words = INPUT_CASES[case]
    source = _write(tmp_path / name, content)
    out = tmp_path / "out"
    result = pretokenize(tiny_assets, [source], out)
    error_line(result, name, *words)
    assert not (out / "manifest.json").exists() and not partial_files(tmp_path)


def test_a_directory_without_data_and_a_glob_matching_nothing(tiny_assets, tmp_path):
    (tmp_path / "empty_dir").mkdir()
    error_line(pretokenize(tiny_assets, [tmp_path / "empty_dir"], tmp_path / "a"), "empty_dir")
    error_line(pretokenize(tiny_assets, [str(tmp_path / "nothing*.jsonl")], tmp_path / "b"), "nothing*.jsonl")


def test_one_huge_document_is_tokenized_in_bounded_memory(tiny_assets, tmp_path):
    """A single 4 MB line (the fault report had 50 MB): pretokenize succeeds and its memory grows by far less
    than the ~120 bytes per character the whole-document encoder needed."""
    sentences = [json.loads(line)["text"] for line in open(tiny_assets["corpus"], encoding="utf-8")]
    text = " ".join(sentences * (4_000_000 // sum(map(len, sentences)) + 1))[:4_000_000]
    huge = _write(tmp_path / "huge.jsonl", json.dumps({"text": text}) + "\n")
    small = _write(tmp_path / "small.jsonl", json.dumps({"text": text[:1000]}) + "\n")
    peaks = {}
    for name, source in (("small", small), ("huge", huge)):
        peaks[name] = _peak_rss_of_pretokenize(tiny_assets, source, tmp_path / name)
    assert peaks["huge"] - peaks["small"] < 40 * len(text), peaks


def _peak_rss_of_pretokenize(assets, source, out) -> int:
    import subprocess

    from train_assets import cli_env

    script = ("import resource, sys\nfrom moderngpt2.cli import main\ncode = main(sys.argv[1:])\n"
              "print('peak', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr)\n"
              "sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script, "pretokenize", "--input", str(source), "--tokenizer_path",
                           str(assets["tokenizer"]), "--output_path", str(out), "--block_size", "32",
                           "--validation_split_percentage", "0", "--no_progress"],
                          capture_output=True, text=True, env=cli_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stderr.split("peak ")[-1].split()[0])


# ----------------------------------------------------------------------------------------------- tokenizers


def test_a_tokenizer_directory_missing_files(tiny_assets, tmp_path):
    broken = tmp_path / "tok_missing"
    shutil.copytree(tiny_assets["tokenizer"], broken)
    (broken / "tokenizer.json").unlink()
    (broken / "tokenizer_config.json").unlink()
    error_line(pretokenize({"tokenizer": broken}, [tiny_assets["corpus"]], tmp_path / "out"), "tok_missing")


def test_a_corrupt_tokenizer_json(tiny_assets, tmp_path):
    broken = tmp_path / "tok_corrupt"
    shutil.copytree(tiny_assets["tokenizer"], broken)
    (broken / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')
    error_line(pretokenize({"tokenizer": broken}, [tiny_assets["corpus"]], tmp_path / "out"), "tok_corrupt")


def test_a_misspelled_local_tokenizer_path_fails_at_once(tiny_assets, tmp_path):
    misspelled = str(tiny_assets["tokenizer"]) + "z"
    result = pretokenize({"tokenizer": misspelled}, [tiny_assets["corpus"]], tmp_path / "out")
    error_line(result, "tokenizerz", "not found")
    near_miss = run_cli("pretokenize", "--input", tiny_assets["corpus"], "--tokenizer_path", "tokenizr",
                        "--output_path", tmp_path / "out2", cwd=Path(tiny_assets["tokenizer"]).parent)
    error_line(near_miss, "tokenizr", "did you mean tokenizer")


def test_vocab_size_below_the_special_tokens(tiny_assets, tmp_path):
    result = run_cli("train-tokenizer", "--input", tiny_assets["corpus"], "--output_path", tmp_path / "tok",
                     "--vocab_size", "100", "--no_progress")
    error_line(result, "--vocab_size 100")
    assert not (tmp_path / "tok" / "tokenizer.json").exists()


def test_train_tokenizer_keeps_an_existing_tokenizer(tiny_assets, tmp_path):
    existing = tmp_path / "tok"
    shutil.copytree(tiny_assets["tokenizer"], existing)
    before = snapshot(existing)
    result = run_cli("train-tokenizer", "--input", tiny_assets["corpus"], "--output_path", existing,
                     "--vocab_size", "300", "--no_progress")
    error_line(result, str(existing), "--overwrite")
    assert snapshot(existing) == before
    assert run_cli("train-tokenizer", "--input", tiny_assets["corpus"], "--output_path", existing,
                   "--vocab_size", "300", "--no_progress", "--overwrite").returncode == 0
    assert snapshot(existing) != before


def test_train_tokenizer_refuses_an_empty_corpus(tmp_path):
    empty = _write(tmp_path / "empty.txt", "\n\n")
    result = run_cli("train-tokenizer", "--input", empty, "--output_path", tmp_path / "tok", "--vocab_size", "300",
                     "--no_progress", "--on_bad_record", "skip")
    error_line(result, "no text")
    assert not (tmp_path / "tok" / "tokenizer.json").exists()


# ----------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize("size", ["0", "-5"])
def test_impossible_block_sizes(tiny_assets, tmp_path, size):
    error_line(pretokenize(tiny_assets, [tiny_assets["corpus"]], tmp_path / "out", "--block_size", size),
               "--block_size")


def test_a_block_size_above_the_models_positions(tiny_assets, tmp_path):
    flags = tiny_train_flags(tiny_assets["tokenizer"], tiny_assets["data"], tmp_path / "out", "--max_steps",
                             "1")
    flags[flags.index("--config_overrides") + 1] += ",n_positions=16"
    error_line(run_cli("train", *flags), "block_size 32", "n_positions=16")


@pytest.mark.parametrize("size", ["0", "5000"])
def test_per_layer_vocab_size_zero_or_above_the_vocabulary(tiny_assets, tmp_path, size):
    result = run_cli("per-layer-vocab", "--tokenizer_path", tiny_assets["tokenizer"],
                     "--pre_tokenized_dataset_path", tiny_assets["data"], "--output", tmp_path / "v.json",
                     "--per-layer-vocab-size", size, "--no_progress")
    error_line(result, "--per-layer-vocab-size")
    assert not (tmp_path / "v.json").exists()


def test_per_layer_vocab_size_zero_in_train(tiny_assets, tmp_path):
    flags = tiny_train_flags(tiny_assets["tokenizer"], tiny_assets["data"], tmp_path / "out", "--max_steps",
                             "1", "--use-per-layer-embedding", "--per-layer-vocab-size", "0")
    error_line(run_cli("train", *flags), "--per-layer-vocab-size")


def test_an_unknown_strategy(tiny_assets, tmp_path):
    result = run_cli("per-layer-vocab", "--tokenizer_path", tiny_assets["tokenizer"],
                     "--pre_tokenized_dataset_path", tiny_assets["data"], "--output", tmp_path / "v.json",
                     "--per-layer-strategy", "grammar_focus")
    error_line(result, "--per-layer-strategy", "grammar_focus")


def test_a_small_corpus_warns_about_its_empty_validation_split(tiny_assets, tmp_path):
    few = _write(tmp_path / "few.jsonl", "".join(json.dumps({"text": f"document {i} is short."}) + "\n"
                                                 for i in range(12)))
    result = pretokenize(tiny_assets, [few], tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "validation split holds no complete block" in warning[0]


# ----------------------------------------------------------------------------------------------- the data a run reads


def _copy_data(assets, tmp_path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(assets["data"], data)
    return data


def _train(assets, data, out, *extra):
    return run_cli("train", *tiny_train_flags(assets["tokenizer"], data, out, "--max_steps", "2", *extra))


def test_data_made_with_another_tokenizer(tiny_assets, tmp_path):
    other = tmp_path / "other_tok"
    assert run_cli("train-tokenizer", "--input", tiny_assets["corpus"], "--output_path", other, "--vocab_size",
                   "300", "--no_progress").returncode == 0
    result = run_cli("train", *tiny_train_flags(other, tiny_assets["data"], tmp_path / "out", "--max_steps", "1"))
    error_line(result, str(tiny_assets["data"]), "another tokenizer")


def test_a_deleted_manifest(tiny_assets, tmp_path):
    data = _copy_data(tiny_assets, tmp_path)
    (data / "manifest.json").unlink()
    error_line(_train(tiny_assets, data, tmp_path / "out"), str(data), "manifest.json")


def test_an_edited_manifest(tiny_assets, tmp_path):
    data = _copy_data(tiny_assets, tmp_path)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"]["train"]["blocks"] += 7
    (data / "manifest.json").write_text(json.dumps(manifest))
    error_line(_train(tiny_assets, data, tmp_path / "out"), str(data), "manifest")


def test_a_truncated_parquet_shard(tiny_assets, tmp_path):
    data = _copy_data(tiny_assets, tmp_path)
    shard = data / "train" / "shard-00000.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    error_line(_train(tiny_assets, data, tmp_path / "out"), "shard-00000.parquet")


def _damage_inside(shard: Path) -> None:
    """Overwrite bytes in the middle of the compressed data; the footer stays intact."""
    raw = bytearray(shard.read_bytes())
    middle = len(raw) // 3
    raw[middle:middle + 64] = bytes(64)
    shard.write_bytes(bytes(raw))
    pq.ParquetFile(shard)  # still opens: the damage is only found by decoding


def test_a_shard_damaged_inside_is_found_by_verify_data(tiny_assets, tmp_path):
    data = _copy_data(tiny_assets, tmp_path)
    _damage_inside(data / "train" / "shard-00000.parquet")
    result = _train(tiny_assets, data, tmp_path / "out", "--verify_data")
    error_line(result, "shard-00000.parquet")


def test_a_shard_damaged_inside_stops_the_run_and_keeps_its_checkpoints(tiny_assets, tmp_path):
    """The damaged shard is the second of two, cut where the run's shuffled order reaches it only after two
    steps: the run trains, checkpoints, then meets the damage."""
    from moderngpt2.data.blocks import write_shard
    from moderngpt2.training.trainer import EpochShuffleSampler

    data = _copy_data(tiny_assets, tmp_path)
    manifest = json.loads((data / "manifest.json").read_text())
    blocks = pq.read_table(data / "train" / "shard-00000.parquet").column(0).to_pylist()
    order = list(EpochShuffleSampler(len(blocks), seed=0))
    cut = max(order[:8]) + 1  # the first two batches of 4 come from the first shard
    assert cut < len(blocks)
    write_shard(str(data / "train" / "shard-00000.parquet"), np.asarray(blocks[:cut], dtype=np.int32))
    write_shard(str(data / "train" / "shard-00001.parquet"), np.asarray(blocks[cut:], dtype=np.int32))
    manifest["splits"]["train"]["shards"] = ["train/shard-00000.parquet", "train/shard-00001.parquet"]
    (data / "manifest.json").write_text(json.dumps(manifest))
    _damage_inside(data / "train" / "shard-00001.parquet")
    out = tmp_path / "out"
    result = _train(tiny_assets, data, out, "--max_steps", "300", "--save_strategy", "steps", "--save_steps", "1",
                    "--save_total_limit", "1")
    line = error_line(result, "shard-00001.parquet", "last good checkpoint")
    checkpoint = line.rsplit("last good checkpoint: ", 1)[1].rstrip(")")
    assert Path(checkpoint).is_dir() and (Path(checkpoint) / "model.safetensors").is_file()


def test_token_ids_beyond_the_vocabulary(tiny_assets, tmp_path):
    data = _copy_data(tiny_assets, tmp_path)
    shard = data / "train" / "shard-00000.parquet"
    blocks = np.asarray(pq.read_table(shard).column(0).to_pylist(), dtype=np.int32)
    blocks[len(blocks) // 2, 5] = 5000
    from moderngpt2.data.blocks import write_shard

    write_shard(str(shard), blocks)
    result = _train(tiny_assets, data, tmp_path / "out", "--verify_data")
    error_line(result, "shard-00000.parquet", "token id 5000", "320")


def test_a_bare_megatron_prefix_names_the_flag_it_needs(tiny_assets, tmp_path):
    out = tmp_path / "megatron"
    done = run_cli("pretokenize", "--input", tiny_assets["corpus"], "--tokenizer_path", tiny_assets["tokenizer"],
                   "--output-prefix", out, "--block_size", "32", "--no_progress")
    assert done.returncode == 0, done.stderr[-2000:]
    prefix = out / "train_text_document"
    assert prefix.with_suffix(".bin").is_file() and prefix.with_suffix(".idx").is_file()
    result = _train(tiny_assets, prefix, tmp_path / "out", "--eval_strategy", "no")
    error_line(result, str(prefix), "--block_size")
    trained = _train(tiny_assets, prefix, tmp_path / "out2", "--eval_strategy", "no", "--block_size", "32")
    assert trained.returncode == 0, trained.stderr[-2000:]


def test_megatron_tokenizer_flags(tiny_assets, tmp_path):
    from moderngpt2.tokenization import load_tokenizer

    vocab_dir = tmp_path / "gpt2_files"
    vocab_dir.mkdir()
    load_tokenizer(str(tiny_assets["tokenizer"])).backend_tokenizer.model.save(str(vocab_dir))
    result = run_cli("pretokenize", "--input", tiny_assets["corpus"], "--vocab-file", vocab_dir / "vocab.json",
                     "--merge-file", vocab_dir / "merges.txt", "--tokenizer-type", "GPT2BPETokenizer",
                     "--output-prefix", tmp_path / "out", "--block_size", "32", "--no_progress")
    assert result.returncode == 0, result.stderr[-2000:]
    wrong = run_cli("pretokenize", "--input", tiny_assets["corpus"], "--tokenizer-type", "BertWordPieceLowerCase",
                    "--output-prefix", tmp_path / "out2")
    error_line(wrong, "--tokenizer-type")


# ----------------------------------------------------------------------------------------------- the filesystem


def test_an_output_path_that_is_a_file(tiny_assets, tmp_path):
    blocker = _write(tmp_path / "blocker", "a file, not a directory\n")
    error_line(run_cli("train-tokenizer", "--input", tiny_assets["corpus"], "--output_path", blocker,
                       "--vocab_size", "300", "--no_progress"), "blocker")
    error_line(pretokenize(tiny_assets, [tiny_assets["corpus"]], blocker), "blocker")
    error_line(run_cli("per-layer-vocab", "--tokenizer_path", tiny_assets["tokenizer"],
                       "--pre_tokenized_dataset_path", tiny_assets["data"], "--output", blocker / "v.json",
                       "--per-layer-vocab-size", "48", "--no_progress"), "blocker")
    assert blocker.read_text() == "a file, not a directory\n"


def test_read_only_output_directories(tiny_assets, tmp_path):
    with small_tmpfs(tmp_path / "ro", "1m", read_only=True) as read_only:
        error_line(run_cli("train-tokenizer", "--input", tiny_assets["corpus"], "--output_path", read_only / "tok",
                           "--vocab_size", "300", "--no_progress"), "read-only")
        error_line(pretokenize(tiny_assets, [tiny_assets["corpus"]], read_only / "data"), "read-only")
        error_line(run_cli("per-layer-vocab", "--tokenizer_path", tiny_assets["tokenizer"],
                           "--pre_tokenized_dataset_path", tiny_assets["data"], "--output",
                           read_only / "v.json", "--per-layer-vocab-size", "48", "--no_progress"), "read-only")


def _bigger_corpus(tmp_path) -> Path:
    return synthetic_corpus(tmp_path / "corpus.jsonl", documents=6000, seed=3)


def test_a_full_disk_during_pretokenize_keeps_finished_shards_and_resumes(tiny_assets, tmp_path):
    corpus = _bigger_corpus(tmp_path)
    settings = ["--max_samples_per_shard", "500", "--chunk_bytes", "16384"]
    reference = tmp_path / "reference"
    assert pretokenize(tiny_assets, [corpus], reference, *settings).returncode == 0
    with small_tmpfs(tmp_path / "disk", "160k") as disk:
        out = disk / "data"
        error_line(pretokenize(tiny_assets, [corpus], out, *settings), "no space left", str(disk))
        sealed = snapshot(out / "train")
        assert sealed, "the disk filled up before any shard was finished: make the tmpfs larger"
        for name, digest in sealed.items():
            if not name.startswith("."):
                assert snapshot(reference / "train")[name] == digest
        assert not (out / "manifest.json").exists()
        remount(disk, "size=64m")
        resumed = pretokenize(tiny_assets, [corpus], out, *settings)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert snapshot(out) == snapshot(reference)


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_an_interrupted_pretokenize_resumes_to_the_same_bytes(tiny_assets, tmp_path, signal_number):
    corpus = _bigger_corpus(tmp_path)
    settings = ["--max_samples_per_shard", "500", "--chunk_bytes", "4096"]
    reference = tmp_path / "reference"
    assert pretokenize(tiny_assets, [corpus], reference, *settings).returncode == 0
    out = tmp_path / "out"
    process = start_cli("pretokenize", "--input", corpus, "--tokenizer_path", tiny_assets["tokenizer"],
                        "--output_path", out, "--block_size", "32", "--no_progress", *settings)
    deadline = time.monotonic() + 120
    while not any(out.glob(".pretokenize-progress-*.json")) or not any(out.glob("train/shard-*.parquet")):
        assert time.monotonic() < deadline and process.poll() is None, "pretokenize finished before the signal"
        time.sleep(0.02)
    os.kill(process.pid, signal_number)
    _, stderr = process.communicate(timeout=60)
    if signal_number == signal.SIGINT:
        assert process.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
        assert stderr.strip().splitlines()[-1] == "moderngpt2 pretokenize: interrupted"
    else:
        assert process.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    resumed = pretokenize(tiny_assets, [corpus], out, *settings)
    assert resumed.returncode == 0 and "resuming" in resumed.stderr, resumed.stderr[-2000:]
    assert snapshot(out) == snapshot(reference)


def test_gzip_input_that_is_not_gzip(tiny_assets, tmp_path):
    fake = _write(tmp_path / "fake.jsonl.gz", b"not gzip at all\n")
    error_line(pretokenize(tiny_assets, [fake], tmp_path / "out"), "fake.jsonl.gz")
