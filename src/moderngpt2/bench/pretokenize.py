"""``moderngpt2 bench pretokenize``: our pretokenizer against the usual ``datasets.map`` recipe, same corpus.

The baseline is what a Hugging Face example script does: ``load_dataset("json")``, ``map(batched=True)``
with the fast tokenizer (EOS appended to each document), ``map(batched=True)`` to concatenate and cut
blocks (1000 documents per batch, its default), ``to_parquet``. Ours is ``moderngpt2 pretokenize`` with the
same tokenizer and block size and no validation split; the benchmark checks that our blocks are exactly the
baseline's tokenized stream, cut in order. Throughput is
megabytes of input JSON Lines per second of wall time, from reading the file to the finished Parquet.

Without ``--input`` the corpus is the standard library's docstrings (repeated ``--repeat`` times), and
without ``--tokenizer_path`` a byte-level BPE tokenizer is trained on it first (not timed).
"""

import itertools
import json
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from ..arguments import SourceArguments, TokenizerArguments, arg
from ..data.blocks import iter_shard_blocks
from ..data.pretokenize import PretokenizeArguments, pretokenize
from ..data.sources import iter_texts
from ..data.stdlib_corpus import build_stdlib_corpus
from ..errors import UserError
from ..fileio import write_json
from ..tokenization import load_tokenizer, save_tokenizer, train_tokenizer

BASELINE = "datasets.map(batched=True) + fast tokenizer, group_texts, to_parquet"


@dataclass
class PretokenizeBenchArguments:
    """The corpus, the tokenizer and the worker counts of both pipelines."""

    _argument_group_name = "pretokenization benchmark"

    input: str | None = arg(None, "a JSON Lines file (default: the stdlib docstring corpus)")
    repeat: int = arg(8, "copies of the stdlib corpus when there is no --input (8 make ~18 MB)")
    tokenizer_path: str | None = arg(None, "tokenizer (default: BPE trained on the corpus)")
    vocab_size: int = arg(32000, "vocabulary of the trained tokenizer")
    block_size: int = arg(1024, "tokens per block")
    num_proc: int = arg(1, "our --num_proc (1: the Rust encoder's own threads)")
    baseline_num_proc: int | None = arg(
        None, "num_proc of the baseline's map (default: --num_proc; 1 means map without num_proc)")
    runs: int = arg(1, "runs of each; the best time counts")

    def __post_init__(self):
        if self.runs < 1 or self.repeat < 1:
            raise UserError("--runs and --repeat must be at least 1")
        if self.input is not None and not os.path.isfile(self.input):
            raise UserError(f"Input file not found: {self.input}")


def _default_corpus(workdir: str, repeat: int) -> str:
    train, _ = build_stdlib_corpus(os.path.join(workdir, "stdlib"), progress=False)
    path = os.path.join(workdir, "corpus.jsonl")
    with open(train, "rb") as source:
        data = source.read()
    with open(path, "wb") as f:
        for _ in range(repeat):
            f.write(data)
    return path


def run_ours(corpus: str, tokenizer_path: str, out: str, block_size: int, num_proc: int) -> float:
    """Seconds of our pretokenizer on the corpus, with the settings of `moderngpt2 pretokenize`."""
    settings = PretokenizeArguments(output_dir=out, block_size=block_size, validation_split_percentage=0,
                                    num_proc=num_proc, no_progress=True, overwrite=True)
    start = time.perf_counter()
    pretokenize(TokenizerArguments(tokenizer_path=tokenizer_path), SourceArguments(input=[corpus]), settings)
    return time.perf_counter() - start


def run_baseline(corpus: str, tokenizer, out: str, cache_dir: str, block_size: int, num_proc: int):
    """The usual Hugging Face recipe, timed from the JSON Lines file to the Parquet file.

    Returns the seconds and the tokenized (not yet grouped) dataset, for the correctness check.
    """
    import datasets

    datasets.disable_progress_bars()
    eos = tokenizer.eos_token

    def tokenize(batch):
        return tokenizer([text + eos for text in batch["text"]], add_special_tokens=False)

    def group_texts(batch):
        stream = list(itertools.chain.from_iterable(batch["input_ids"]))
        usable = len(stream) // block_size * block_size
        return {"input_ids": [stream[i:i + block_size] for i in range(0, usable, block_size)]}

    procs = num_proc if num_proc > 1 else None
    start = time.perf_counter()
    dataset = datasets.load_dataset("json", data_files=corpus, split="train", cache_dir=cache_dir)
    tokenized = dataset.map(tokenize, batched=True, remove_columns=dataset.column_names, num_proc=procs)
    grouped = tokenized.map(group_texts, batched=True, remove_columns=tokenized.column_names, num_proc=procs)
    grouped.to_parquet(out)
    return time.perf_counter() - start, tokenized


def _same_stream(ours_dir: str, tokenized, block_size: int) -> bool:
    """Our blocks are the baseline's token stream, cut in order (its per-batch tails aside)."""
    with open(os.path.join(ours_dir, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    shards = manifest["splits"]["train"]["shards"]
    ours = np.concatenate([blocks.reshape(-1) for shard in shards
                           for blocks in iter_shard_blocks(os.path.join(ours_dir, shard), "input_ids", block_size)])
    stream = np.fromiter(itertools.chain.from_iterable(tokenized["input_ids"]), dtype=np.int32)
    return ours.size == stream.size // block_size * block_size and bool((ours == stream[:ours.size]).all())


def run_benchmark(settings: PretokenizeBenchArguments, output_json: str | None) -> dict:
    """Both pipelines on one corpus, `settings.runs` times each; their best throughputs and whether they agree."""
    baseline_procs = settings.num_proc if settings.baseline_num_proc is None else settings.baseline_num_proc
    with tempfile.TemporaryDirectory(prefix="bench-pretokenize-") as workdir:
        corpus = settings.input or _default_corpus(workdir, settings.repeat)
        tokenizer_path = settings.tokenizer_path
        if tokenizer_path is None:
            tokenizer_path = os.path.join(workdir, "tokenizer")
            save_tokenizer(train_tokenizer(iter_texts([corpus]), vocab_size=settings.vocab_size, progress=False),
                           tokenizer_path)
        tokenizer = load_tokenizer(tokenizer_path)
        megabytes = os.path.getsize(corpus) / 1e6
        ours_times, baseline_times = [], []
        for run in range(settings.runs):
            ours_times.append(run_ours(corpus, tokenizer_path, os.path.join(workdir, "ours"), settings.block_size,
                                       settings.num_proc))
            seconds, tokenized = run_baseline(corpus, tokenizer, os.path.join(workdir, f"baseline-{run}.parquet"),
                                              os.path.join(workdir, f"cache-{run}"), settings.block_size,
                                              baseline_procs)
            baseline_times.append(seconds)
        identical = _same_stream(os.path.join(workdir, "ours"), tokenized, settings.block_size)
    ours, baseline = megabytes / min(ours_times), megabytes / min(baseline_times)
    result = {"corpus_mb": round(megabytes, 3), "vocab_size": len(tokenizer), "block_size": settings.block_size,
              "num_proc": settings.num_proc, "baseline_num_proc": baseline_procs, "cpus": os.cpu_count(),
              "ours_mb_per_s": round(ours, 3), "baseline_mb_per_s": round(baseline, 3),
              "ratio": round(ours / baseline, 3), "same_token_stream": identical, "ours_seconds": ours_times,
              "baseline_seconds": baseline_times}
    if output_json:
        write_json(output_json, result)
    return result


def format_report(result: dict) -> str:
    """Both throughputs, their ratio and whether the token streams agree."""
    return "\n".join([
        f"corpus {result['corpus_mb']:.1f} MB, vocabulary {result['vocab_size']}, block {result['block_size']}, "
        f"num_proc {result['num_proc']} (baseline {result['baseline_num_proc']}), {result['cpus']} CPUs",
        f"ours      {result['ours_mb_per_s']:7.2f} MB/s",
        f"baseline  {result['baseline_mb_per_s']:7.2f} MB/s   ({BASELINE})",
        f"ratio     {result['ratio']:7.2f}x   same token stream: {'yes' if result['same_token_stream'] else 'NO'}",
    ])
