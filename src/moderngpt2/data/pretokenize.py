"""``moderngpt2 pretokenize``: raw text -> fixed-length token blocks (Parquet shards or Megatron .bin/.idx).

Every document is tokenized whole and followed by EOS (preceded by BOS too when the tokenizer's BOS differs
from its EOS); the documents of a split form one token stream that is cut into ``block_size`` blocks, so a
long document spans several blocks and nothing is truncated. The tail of a split shorter than one block is
dropped and counted in the manifest (``dropped_tail_tokens``).

Documents go to the validation split by a seeded hash of their text (``--validation_split_percentage``),
so identical texts always land in the same split; with ``--eval_input`` the validation split is that input
instead, and training documents identical to an evaluation document are dropped (and counted).

Resumable and deterministic: the input is read in chunks whose boundaries depend only on the input; after
every chunk the position in the input and each split writer's state go to a new numbered checkpoint file
(``.pretokenize-progress-NNNNNNNNN.json``; see ``ProgressLog``). Run again after a crash or a SIGKILL and
it continues from there; shards are the same bytes as those of an uninterrupted run, whatever
``--num_proc``. ``manifest.json`` is written last.
"""

import argparse
import hashlib
import json
import os
import sys
from collections import Counter

import numpy as np
from tqdm.auto import tqdm

from ..argparsing import CommandParser
from ..errors import UserError
from ..fileio import make_directory, user_error_from, write_json
from ..tokenization import tokenizer_fingerprint, tokenizer_from_args
from .arguments import add_flag, add_source_flags, add_tokenizer_flags, source_specs
from .blocks import ParquetSplitWriter
from .encode import EncoderSettings, distinct_bos, encode_in_order
from .layout import EVAL_DIGESTS, FORMAT, MAIN_COLUMN, MANIFEST, PROGRESS_PREFIX, SPLITS, progress_files
from .megatron import MegatronSplitWriter, token_dtype
from .sources import CHUNK_BYTES, Position, describe_skipped, iter_chunks, resolve_sources

DEFAULT_VALIDATION_PERCENTAGE = 5.0


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="moderngpt2 pretokenize",
        description="Tokenize text into fixed-length blocks: Parquet shards (default) or Megatron .bin/.idx, "
                    "with a held-out validation split and a manifest. Resumable: run it again after a crash.")
    add_tokenizer_flags(parser)
    add_source_flags(parser)
    output = parser.add_argument_group("output")
    add_flag(output, "--output_path", default=None, help="output directory (required)")
    add_flag(output, "--output-prefix", default=None,
             help="Megatron style: Megatron .bin/.idx files in this directory (--output_path P --format megatron)")
    add_flag(output, "--format", choices=("parquet", "megatron"), default="parquet",
             help="parquet: OUT/<split>/shard-*.parquet (default); megatron: OUT/<split>_text_document.bin/.idx")
    add_flag(output, "--block_size", type=int, default=1024, help="tokens per block (default: 1024)")
    add_flag(output, "--max_samples_per_shard", type=int, default=200000,
             help="blocks per Parquet shard (default: 200000)")
    add_flag(output, "--overwrite", action="store_true", help="delete earlier output in OUT and start over")
    split = parser.add_argument_group("validation split")
    add_flag(split, "--validation_split_percentage", type=float, default=None,
             help=f"percent of documents held out, chosen by a seeded hash of the text (default: "
                  f"{DEFAULT_VALIDATION_PERCENTAGE:g}; 0 without --eval_input means no validation split)")
    add_flag(split, "--eval_input", nargs="+", default=None,
             help="a separate input for the validation split (training copies of its documents are dropped)")
    add_flag(split, "--seed", type=int, default=0, help="seed of the split hash (default: 0)")
    run = parser.add_argument_group("run")
    add_flag(run, "--num_proc", type=int, default=1,
             help="tokenizer processes; 1 (default) tokenizes on the Rust encoder's own threads")
    add_flag(run, "--chunk_bytes", type=int, default=CHUNK_BYTES,
             help="input bytes per unit of work and checkpoint (default: 1 MiB; the output does not depend on it)")
    add_flag(run, "--no_progress", action="store_true", help="no progress bar")
    return parser


# ----------------------------------------------------------------------------------------------- routing


class SplitRouter:
    """Which split each document goes to: 0 train, 1 validation, -1 dropped (a copy of an eval document)."""

    def __init__(self, percentage: float):
        self.threshold = np.uint64(min(int(percentage / 100.0 * 2**64), 2**64 - 1))
        self.eval_digests = None  # sorted, set once the --eval_input phase is done

    def route(self, digests: np.ndarray, phase: str) -> np.ndarray:
        if phase == "eval":
            return np.ones(digests.size, dtype=np.int8)
        if self.eval_digests is not None:
            return np.where(np.isin(digests, self.eval_digests), -1, 0).astype(np.int8)
        return (digests < self.threshold).astype(np.int8)


# ----------------------------------------------------------------------------------------------- files


def _read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: damaged ({error}) — pass --overwrite to start over") from None


class ProgressLog:
    """Checkpoints as numbered files: each one is a new file, after which the previous one is removed.

    Renaming a temporary file over one progress file would be atomic too, but on ext4 a rename over an
    existing file first pushes the new file's data to the disk (``auto_da_alloc``), which costs up to a
    tenth of a second per checkpoint when the disk is busy. A checkpoint cut short by a kill does not parse
    and is ignored in favour of the one before it.
    """

    def __init__(self, out: str):
        self.out, self.number = out, 0

    def load(self) -> dict | None:
        for path in reversed(progress_files(self.out)):
            try:
                with open(path, encoding="utf-8") as f:
                    state = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            self.number = int(os.path.basename(path)[len(PROGRESS_PREFIX):-len(".json")])
            return state
        return None

    def save(self, state: dict) -> None:
        self.number += 1
        path = os.path.join(self.out, f"{PROGRESS_PREFIX}{self.number:09d}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(state, f)
        for older in progress_files(self.out):
            if older != path:
                os.remove(older)

    def clear(self) -> None:
        for path in progress_files(self.out):
            os.remove(path)


def remove_outputs(out: str) -> None:
    """Delete what an earlier pretokenize run wrote into ``out`` (and nothing else)."""
    ProgressLog(out).clear()
    for name in (MANIFEST, MANIFEST + ".tmp", EVAL_DIGESTS):
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    for split in SPLITS:
        folder = os.path.join(out, split)
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if name.startswith(("shard-", ".shard-")):
                    os.remove(os.path.join(folder, name))
            if not os.listdir(folder):
                os.rmdir(folder)
        for suffix in (".bin", ".idx", ".bin.partial", ".lengths.partial", ".idx.tmp"):
            path = os.path.join(out, f"{split}_text_document{suffix}")
            if os.path.exists(path):
                os.remove(path)


def _make_writers(args, out: str, vocab_size: int) -> dict:
    if args.format == "megatron":
        dtype = token_dtype(vocab_size)
        return {split: MegatronSplitWriter(os.path.join(out, f"{split}_text_document"), dtype) for split in SPLITS}
    return {split: ParquetSplitWriter(os.path.join(out, split), args.block_size, args.max_samples_per_shard)
            for split in SPLITS}


# ----------------------------------------------------------------------------------------------- the run


def _settings(args, fingerprint: str, percentage: float) -> dict:
    """Everything that decides the output bytes (not --num_proc, not --on_bad_record: see the docs)."""
    return {"tokenizer_fingerprint": fingerprint, "inputs": source_specs(args), "eval_inputs": args.eval_input,
            "text_field": args.text_field, "c4_dataset": args.c4_dataset, "dataset_split": args.dataset_split,
            "limit": args.max_input_lines_total, "format": args.format, "block_size": args.block_size,
            "shard_blocks": args.max_samples_per_shard, "validation_percentage": percentage, "seed": args.seed}


def _validate(args) -> float:
    if args.output_prefix is not None:
        if args.output_path is not None:
            raise UserError("give either --output_path or --output-prefix, not both")
        args.output_path, args.format = args.output_prefix, "megatron"
    if args.output_path is None:
        raise UserError("--output_path is required (or Megatron's --output-prefix)")
    if args.block_size < 2:
        raise UserError(f"--block_size must be at least 2, got {args.block_size}")
    if args.max_samples_per_shard < 1:
        raise UserError(f"--max_samples_per_shard must be positive, got {args.max_samples_per_shard}")
    if args.num_proc < 1 or args.chunk_bytes < 1:
        raise UserError("--num_proc and --chunk_bytes must be at least 1")
    if args.eval_input and args.validation_split_percentage:
        raise UserError("give either --eval_input or --validation_split_percentage, not both")
    percentage = args.validation_split_percentage
    if percentage is None:
        percentage = 0.0 if args.eval_input else DEFAULT_VALIDATION_PERCENTAGE
    if not 0.0 <= percentage < 100.0:
        raise UserError(f"--validation_split_percentage must be in [0, 100), got {percentage}")
    return float(percentage)


class Run:
    """One pretokenize run into ``out``: restores a checkpoint if there is one, then reads to the end."""

    def __init__(self, args, tokenizer, out: str, settings: dict, settings_hash: str, percentage: float,
                 progress: ProgressLog):
        self.args, self.tokenizer, self.out = args, tokenizer, out
        self.settings, self.settings_hash = settings, settings_hash
        self.router = SplitRouter(percentage)
        self.writers = _make_writers(args, out, len(tokenizer))
        self.phases = ([("eval", resolve_sources(args.eval_input, args.c4_dataset), None)] if args.eval_input
                       else [])
        self.phases.append(("main", resolve_sources(source_specs(args), args.c4_dataset),
                            args.max_input_lines_total))
        self.phase, self.position = 0, Position()
        self.skipped, self.overlap_dropped, self.input_bytes, self.eval_count = {}, 0, 0, 0
        self._eval_file = None
        self.progress = progress  # loaded already: new checkpoints continue its numbering

    # -- checkpoints -----------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        state = {"format": "moderngpt2-pretokenize-progress", "settings_hash": self.settings_hash,
                 "phase": self.phase, "position": self.position.to_json(),
                 "writers": {split: w.state() for split, w in self.writers.items()}, "skipped": self.skipped,
                 "overlap_dropped": self.overlap_dropped, "input_bytes": self.input_bytes,
                 "eval_digests": self.eval_count}
        if self._eval_file is not None:
            self._eval_file.flush()
        self.progress.save(state)
        for writer in self.writers.values():
            writer.after_checkpoint()

    def restore(self, progress: dict | None) -> None:
        eval_path = os.path.join(self.out, EVAL_DIGESTS)
        if progress:
            self.phase, self.position = progress["phase"], Position.from_json(progress["position"])
            self.skipped, self.overlap_dropped = progress["skipped"], progress["overlap_dropped"]
            self.input_bytes, self.eval_count = progress["input_bytes"], progress["eval_digests"]
            for split, writer in self.writers.items():
                writer.restore(progress["writers"][split])
        if self.eval_count:
            with open(eval_path, "r+b") as f:
                f.truncate(self.eval_count * 8)
        elif os.path.exists(eval_path):
            os.remove(eval_path)
        for writer in self.writers.values():
            writer.remove_leftovers()
        eval_done = self.phase >= len(self.phases) or self.phases[self.phase][0] != "eval"
        if eval_done and self.eval_count:
            self.router.eval_digests = np.unique(np.fromfile(eval_path, dtype="<u8"))

    # -- reading ---------------------------------------------------------------------------------------
    def _add(self, encoded, phase: str) -> None:
        routes = self.router.route(encoded.digests, phase)
        self.overlap_dropped += int((routes == -1).sum())
        for index, split in enumerate(SPLITS):
            selected = routes == index
            if selected.all():
                self.writers[split].add(encoded.tokens, encoded.lengths)
            elif selected.any():
                self.writers[split].add(encoded.tokens[np.repeat(selected, encoded.lengths)],
                                        encoded.lengths[selected])
        if phase == "eval" and encoded.digests.size:
            if self._eval_file is None:
                self._eval_file = open(os.path.join(self.out, EVAL_DIGESTS), "ab")
            self._eval_file.write(encoded.digests.astype("<u8").tobytes())
            self.eval_count += int(encoded.digests.size)
        for reason, count in encoded.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + count
        self.input_bytes += encoded.raw_bytes

    def read_all(self, settings: EncoderSettings, bar) -> None:
        while self.phase < len(self.phases):
            name, sources, limit = self.phases[self.phase]
            chunks = iter_chunks(sources, self.position, limit, self.args.text_field, self.args.dataset_split,
                                 self.args.chunk_bytes)
            for encoded in encode_in_order(chunks, settings, self.args.num_proc):
                self._add(encoded, name)
                self.position = encoded.end
                self.checkpoint()
                bar.update(encoded.raw_bytes)
                bar.set_postfix(tokens=sum(w.tokens for w in self.writers.values()), refresh=False)
            if name == "eval":
                if self._eval_file is not None:
                    self._eval_file.close()
                    self._eval_file = None
                self.router.eval_digests = np.unique(np.fromfile(os.path.join(self.out, EVAL_DIGESTS), "<u8")
                                                     if self.eval_count else np.zeros(0, np.uint64))
            self.phase, self.position = self.phase + 1, Position()
            self.checkpoint()

    def finish(self) -> dict:
        splits = {}
        for split, writer in self.writers.items():
            summary = writer.finish(self.args.block_size)
            if self.args.format == "parquet":
                summary["shards"] = [f"{split}/{name}" for name in summary["shards"]]
            splits[split] = summary
        tokenizer = self.tokenizer
        manifest = {
            "format": FORMAT, "version": 1, "storage": self.args.format, "block_size": self.args.block_size,
            "column": MAIN_COLUMN, "tokenizer_fingerprint": self.settings["tokenizer_fingerprint"],
            "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": distinct_bos(tokenizer), "settings_hash": self.settings_hash,
            "inputs": self.settings["inputs"], "eval_inputs": self.settings["eval_inputs"],
            "validation": {"method": "eval_input" if self.args.eval_input else "hash",
                           "percentage": self.settings["validation_percentage"], "seed": self.args.seed},
            "skipped_records": self.skipped, "overlap_dropped_documents": self.overlap_dropped,
            "splits": splits,
        }
        write_json(os.path.join(self.out, MANIFEST), manifest, sort_keys=True)
        for writer in self.writers.values():
            writer.after_checkpoint()
            writer.close()
        self.progress.clear()
        if os.path.exists(os.path.join(self.out, EVAL_DIGESTS)):
            os.remove(os.path.join(self.out, EVAL_DIGESTS))
        return manifest

    def close(self) -> None:
        if self._eval_file is not None:
            self._eval_file.close()
        for writer in self.writers.values():
            writer.close()


def _input_size(sources) -> int | None:
    """Total bytes of the input files, for the progress bar (None when a source is not a plain file)."""
    if any(s.kind not in ("jsonl", "txt", "parquet") or s.location.endswith(".gz") for s in sources):
        return None
    return sum(os.path.getsize(s.location) for s in sources)


def pretokenize(args) -> dict:
    """Run (or resume) ``moderngpt2 pretokenize`` with parsed arguments; returns the manifest."""
    percentage = _validate(args)
    tokenizer = tokenizer_from_args(args)
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no eos_token: documents are separated by it — set one")
    fingerprint = tokenizer_fingerprint(tokenizer)
    settings = _settings(args, fingerprint, percentage)
    settings_hash = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    out = args.output_path
    make_directory(out, "--output_path")
    if args.overwrite:
        remove_outputs(out)
    manifest = _read_json(os.path.join(out, MANIFEST))
    if manifest is not None:
        if manifest.get("settings_hash") == settings_hash:
            print(f"{out} is complete already (same tokenizer, input and settings): nothing to do", file=sys.stderr)
            return manifest
        raise UserError(f"{out} already holds pretokenized data made with other settings — pass --overwrite "
                        "to replace it or choose another --output_path")
    log = ProgressLog(out)
    progress = log.load()
    if progress is not None and progress.get("settings_hash") != settings_hash:
        raise UserError(f"{out} holds an unfinished run with another tokenizer, input or settings — pass "
                        "--overwrite to start over or choose another --output_path")
    run = Run(args, tokenizer, out, settings, settings_hash, percentage, log)
    encoder = EncoderSettings.for_tokenizer(tokenizer, text_field=args.text_field, on_bad_record=args.on_bad_record,
                                            seed=args.seed)
    try:
        try:
            run.restore(progress)
            if progress is not None:
                print(f"resuming the unfinished run in {out}", file=sys.stderr)
            sources = [s for _, phase_sources, _ in run.phases for s in phase_sources]
            with tqdm(total=_input_size(sources), initial=run.input_bytes, unit="B", unit_scale=True,
                      desc="pretokenize", disable=args.no_progress) as bar:
                run.read_all(encoder, bar)
            if run.writers["train"].documents == 0:
                raise UserError(f"no documents in {' '.join(source_specs(args))}: nothing to pretokenize — check "
                                "the files and --text_field")
            return run.finish()
        finally:
            run.close()
    except UserError:
        raise
    except Exception as error:  # a full or read-only disk under OUT, whichever writer (Python, Arrow) met it
        problem = user_error_from(error, out)
        if problem is error:
            raise
        raise UserError(f"{problem} — the last checkpoint is kept: run the same command again to continue") from None


def summary_lines(manifest: dict) -> list[str]:
    lines = []
    for split, entry in manifest["splits"].items():
        lines.append(f"{split}: {entry['documents']:,} documents, {entry['tokens']:,} tokens, {entry['blocks']:,} "
                     f"blocks of {manifest['block_size']} ({len(entry['shards'])} files; "
                     f"{entry['dropped_tail_tokens']} tail tokens dropped)")
        wanted = split == "train" or manifest["validation"]["percentage"] > 0 or manifest["eval_inputs"]
        if entry["blocks"] == 0 and (entry["documents"] or wanted):
            lines.append(f"warning: the {split} split holds no complete block ({entry['documents']} documents, "
                         f"{entry['tokens']} tokens); `moderngpt2 train` needs one: use more text, a larger "
                         "--validation_split_percentage or --eval_input, or a smaller --block_size")
    if manifest["skipped_records"]:
        lines.append(f"skipped records: {describe_skipped(Counter(manifest['skipped_records']))}")
    if manifest["overlap_dropped_documents"]:
        lines.append(f"training documents dropped as copies of evaluation documents: "
                     f"{manifest['overlap_dropped_documents']}")
    return lines


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    manifest = pretokenize(args)
    for line in summary_lines(manifest):
        print(line, file=sys.stderr if line.startswith("warning:") else sys.stdout)
    print(f"wrote {os.path.join(args.output_path, MANIFEST)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
