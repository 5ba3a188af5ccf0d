"""Pretokenizing: raw text -> fixed-length token blocks (Parquet shards or Megatron .bin/.idx).

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

import hashlib
import json
import os
import sys
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from ..arguments import SourceArguments, TokenizerArguments, arg
from ..errors import UserError
from ..fileio import make_directory, user_error_from, write_json
from ..jsonfile import read_json_object
from ..tokenization import tokenizer_fingerprint, tokenizer_from_arguments
from .blocks import ParquetSplitWriter
from .encode import EncoderSettings, distinct_bos, encode_in_order
from .layout import EVAL_DIGESTS, FORMAT, MAIN_COLUMN, MANIFEST, PROGRESS_PREFIX, SPLITS, progress_files
from .megatron import MegatronSplitWriter, token_dtype
from .sources import CHUNK_BYTES, Position, iter_chunks, resolve_sources

DEFAULT_VALIDATION_PERCENTAGE = 5.0


@dataclass
class PretokenizeArguments:
    """Where the blocks go and how they are cut and split (the text and tokenizer have their own groups)."""

    _argument_group_name = "pretokenize"

    output_dir: str | None = arg(None, "output directory (required, or Megatron's --output-prefix)",
                                 aliases=("--output_path",))
    output_prefix: str | None = arg(
        None, "Megatron style: Megatron .bin/.idx files in this directory (--output_dir P --format megatron)")
    format: str = arg("parquet", "parquet: OUT/<split>/shard-*.parquet; megatron: OUT/<split>_text_document.bin/.idx",
                      choices=("parquet", "megatron"))
    block_size: int = arg(1024, "tokens per block")
    max_samples_per_shard: int = arg(200000, "blocks per Parquet shard")
    overwrite: bool = arg(False, "delete earlier output in OUT and start over")
    validation_split_percentage: float | None = arg(
        None, f"percent of documents held out, chosen by a seeded hash of the text (default: "
              f"{DEFAULT_VALIDATION_PERCENTAGE:g}; 0 without --eval_input means no validation split)")
    eval_input: list[str] | None = arg(
        None, "a separate input for the validation split (training copies of its documents are dropped)")
    seed: int = arg(0, "seed of the split hash")
    num_proc: int = arg(1, "tokenizer processes; 1 tokenizes on the Rust encoder's own threads")
    chunk_bytes: int = arg(CHUNK_BYTES, "input bytes per unit of work and checkpoint; the output does not depend on it")
    no_progress: bool = arg(False, "no progress bar")


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


def _make_writers(args: PretokenizeArguments, out: str, vocab_size: int) -> dict:
    if args.format == "megatron":
        dtype = token_dtype(vocab_size)
        return {split: MegatronSplitWriter(os.path.join(out, f"{split}_text_document"), dtype) for split in SPLITS}
    return {split: ParquetSplitWriter(os.path.join(out, split), args.block_size, args.max_samples_per_shard)
            for split in SPLITS}


# ----------------------------------------------------------------------------------------------- the run


def _settings(source: SourceArguments, args: PretokenizeArguments, fingerprint: str, percentage: float) -> dict:
    """Everything that decides the output bytes (not --num_proc, not --on_bad_record: see the docs)."""
    return {"tokenizer_fingerprint": fingerprint, "inputs": source.source_specs(), "eval_inputs": args.eval_input,
            "text_field": source.text_field, "c4_dataset": source.c4_dataset, "dataset_split": source.dataset_split,
            "limit": source.max_input_lines_total, "format": args.format, "block_size": args.block_size,
            "shard_blocks": args.max_samples_per_shard, "validation_percentage": percentage, "seed": args.seed}


def _validate(args: PretokenizeArguments) -> float:
    """Check the settings (Megatron's --output-prefix becomes --output_dir); the validation percentage."""
    if args.output_prefix is not None:
        if args.output_dir is not None:
            raise UserError("give either --output_dir or --output-prefix, not both")
        args.output_dir, args.format = args.output_prefix, "megatron"
    if args.output_dir is None:
        raise UserError("--output_dir is required (or Megatron's --output-prefix)")
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

    def __init__(self, source: SourceArguments, args: PretokenizeArguments, tokenizer, out: str, settings: dict,
                 settings_hash: str, percentage: float, progress: ProgressLog):
        self.source, self.args, self.tokenizer, self.out = source, args, tokenizer, out
        self.settings, self.settings_hash = settings, settings_hash
        self.router = SplitRouter(percentage)
        self.writers = _make_writers(args, out, len(tokenizer))
        self.phases = ([("eval", resolve_sources(args.eval_input, source.c4_dataset), None)] if args.eval_input
                       else [])
        self.phases.append(("main", resolve_sources(source.source_specs(), source.c4_dataset),
                            source.max_input_lines_total))
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
            chunks = iter_chunks(sources, self.position, limit, self.source.text_field, self.source.dataset_split,
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


def pretokenize(tokenizer_arguments: TokenizerArguments, source: SourceArguments,
                args: PretokenizeArguments) -> dict:
    """Run (or resume) pretokenizing into --output_dir; returns the manifest."""
    percentage = _validate(args)
    tokenizer = tokenizer_from_arguments(tokenizer_arguments)
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no eos_token: documents are separated by it — set one")
    fingerprint = tokenizer_fingerprint(tokenizer)
    settings = _settings(source, args, fingerprint, percentage)
    settings_hash = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    out = args.output_dir
    make_directory(out, "--output_dir")
    if args.overwrite:
        remove_outputs(out)
    manifest_path = os.path.join(out, MANIFEST)
    manifest = (read_json_object(manifest_path, "manifest, damaged: pass --overwrite to start over")
                if os.path.exists(manifest_path) else None)
    if manifest is not None:
        if manifest.get("settings_hash") == settings_hash:
            print(f"{out} is complete already (same tokenizer, input and settings): nothing to do", file=sys.stderr)
            return manifest
        raise UserError(f"{out} already holds pretokenized data made with other settings — pass --overwrite "
                        "to replace it or choose another --output_dir")
    log = ProgressLog(out)
    progress = log.load()
    if progress is not None and progress.get("settings_hash") != settings_hash:
        raise UserError(f"{out} holds an unfinished run with another tokenizer, input or settings — pass "
                        "--overwrite to start over or choose another --output_dir")
    run = Run(source, args, tokenizer, out, settings, settings_hash, percentage, log)
    encoder = EncoderSettings.for_tokenizer(tokenizer, text_field=source.text_field,
                                            on_bad_record=source.on_bad_record, seed=args.seed)
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
                raise UserError(f"no documents in {' '.join(source.source_specs())}: nothing to pretokenize — check "
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
