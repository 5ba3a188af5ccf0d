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

import argparse
import itertools
import json
import os
import sys
import tempfile
import time

import numpy as np

from ..argparsing import CommandParser
from ..arguments import SourceArguments, TokenizerArguments
from ..data.arguments import add_flag
from ..data.blocks import iter_shard_blocks
from ..data.pretokenize import PretokenizeArguments, pretokenize
from ..data.sources import iter_texts
from ..data.stdlib_corpus import build_stdlib_corpus
from ..errors import UserError
from ..tokenization import load_tokenizer, save_tokenizer, train_tokenizer


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="moderngpt2 bench pretokenize", description=__doc__.split("\n\n")[0])
    add_flag(parser, "--input", default=None, help="a JSON Lines file (default: the stdlib docstring corpus)")
    add_flag(parser, "--repeat", type=int, default=8, help="copies of the default corpus (default: 8, ~18 MB)")
    add_flag(parser, "--tokenizer_path", default=None, help="tokenizer (default: BPE trained on the corpus)")
    add_flag(parser, "--vocab_size", type=int, default=32000, help="vocabulary of the trained tokenizer (32000)")
    add_flag(parser, "--block_size", type=int, default=1024, help="tokens per block (default: 1024)")
    add_flag(parser, "--num_proc", type=int, default=1,
             help="our --num_proc (default: 1, the Rust encoder's own threads)")
    add_flag(parser, "--baseline_num_proc", type=int, default=None,
             help="num_proc of the baseline's map (default: --num_proc; 1 means map without num_proc)")
    add_flag(parser, "--runs", type=int, default=1, help="runs of each; the best time counts (default: 1)")
    add_flag(parser, "--json", default=None, help="also write the results to this JSON file")
    return parser


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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.runs < 1 or args.repeat < 1:
        raise UserError("--runs and --repeat must be at least 1")
    baseline_procs = args.num_proc if args.baseline_num_proc is None else args.baseline_num_proc
    with tempfile.TemporaryDirectory(prefix="bench-pretokenize-") as workdir:
        corpus = args.input or _default_corpus(workdir, args.repeat)
        if not os.path.isfile(corpus):
            raise UserError(f"Input file not found: {corpus}")
        tokenizer_path = args.tokenizer_path
        if tokenizer_path is None:
            tokenizer_path = os.path.join(workdir, "tokenizer")
            save_tokenizer(train_tokenizer(iter_texts([corpus]), vocab_size=args.vocab_size, progress=False),
                           tokenizer_path)
        tokenizer = load_tokenizer(tokenizer_path)
        megabytes = os.path.getsize(corpus) / 1e6
        ours_times, baseline_times = [], []
        for run in range(args.runs):
            ours_times.append(run_ours(corpus, tokenizer_path, os.path.join(workdir, "ours"), args.block_size,
                                       args.num_proc))
            seconds, tokenized = run_baseline(corpus, tokenizer, os.path.join(workdir, f"baseline-{run}.parquet"),
                                              os.path.join(workdir, f"cache-{run}"), args.block_size, baseline_procs)
            baseline_times.append(seconds)
        identical = _same_stream(os.path.join(workdir, "ours"), tokenized, args.block_size)
    ours, baseline = megabytes / min(ours_times), megabytes / min(baseline_times)
    result = {"corpus_mb": round(megabytes, 3), "vocab_size": len(tokenizer), "block_size": args.block_size,
              "num_proc": args.num_proc, "baseline_num_proc": baseline_procs, "cpus": os.cpu_count(),
              "ours_mb_per_s": round(ours, 3), "baseline_mb_per_s": round(baseline, 3),
              "ratio": round(ours / baseline, 3), "same_token_stream": identical, "ours_seconds": ours_times,
              "baseline_seconds": baseline_times}
    print(f"corpus {megabytes:.1f} MB, vocabulary {len(tokenizer)}, block {args.block_size}, num_proc {args.num_proc} "
          f"(baseline {baseline_procs}), {os.cpu_count()} CPUs")
    print(f"ours      {ours:7.2f} MB/s")
    print(f"baseline  {baseline:7.2f} MB/s   (datasets.map(batched=True) + fast tokenizer, group_texts, to_parquet)")
    print(f"ratio     {ours / baseline:7.2f}x   same token stream: {'yes' if identical else 'NO'}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
