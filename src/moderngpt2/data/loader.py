"""The training-side view of pretokenized data: a torch ``Dataset`` of fixed-length blocks.

``load_block_dataset(path, split)`` reads a directory written by ``moderngpt2 pretokenize`` (Parquet
shards or Megatron files, described by ``manifest.json``) or a bare Megatron prefix (``..._text_document``
with ``.bin``/``.idx``, e.g. made by Megatron's own tools with ``--append-eod``), which it cuts into
``block_size`` blocks. With ``per_layer_path`` every item also carries the aligned explicit per-layer ids
written by ``moderngpt2 per-layer-vocab --per-layer-output-prefix``; their alignment (same data, same
block layout) is checked before anything is read.

Parquet blocks are read one row group at a time (64K tokens) with a small cache, so random sampling
stays cheap and memory stays flat; the dataset pickles without open files, for DataLoader workers.

Damage is caught as early as it is cheap: opening checks every shard's footer (and, where a shard carries
column statistics, its largest token id against the vocabulary); ``verify()`` decodes everything (``train
--verify_data``); and every read checks what it decoded, so a shard damaged inside still stops a run in one
line naming the shard (``DataFault``) instead of an IndexError deep inside the model.
"""

import bisect
import os
from collections import OrderedDict

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from ..errors import UserError, first_line
from ..jsonfile import read_json_object
from ..tokenization import tokenizer_fingerprint
from .blocks import open_shard, read_row_group
from .layout import FORMAT, MAIN_COLUMN, MANIFEST, PER_LAYER_COLUMN, PER_LAYER_FORMAT, progress_files
from .megatron import open_tokens

CACHED_ROW_GROUPS = 16
VERIFY_TOKENS = 1 << 22  # Megatron tokens checked per step of verify()


class DataFault(UserError):
    """Training data that turned out damaged or foreign while it was read."""


def check_token_ids(largest: int, vocab_size: int | None, where: str) -> None:
    if vocab_size is not None and largest >= vocab_size:
        raise DataFault(f"{where} holds token id {largest}, beyond the vocabulary of {vocab_size} tokens: the data "
                        "was not made with this tokenizer — pretokenize it again with the tokenizer you train with")


def read_manifest(path: str) -> dict:
    """The manifest of a pretokenized directory; a one-line error if it is missing, unfinished or foreign."""
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.exists(manifest_path):
        if progress_files(path):
            raise UserError(f"{path} is unfinished: pretokenize was interrupted — run the same "
                            "`moderngpt2 pretokenize` command again to finish it")
        raise UserError(f"no pretokenized data at {path} ({MANIFEST} not found) — run "
                        f"`moderngpt2 pretokenize ... --output_path {path}` first")
    manifest = read_json_object(manifest_path, "pretokenized-data manifest")
    if manifest.get("format") != FORMAT or manifest.get("version") != 1:
        raise UserError(f"{manifest_path}: not a {FORMAT} version 1 manifest")
    missing = [key for key in ("block_size", "tokenizer_fingerprint", "splits") if key not in manifest]
    if missing:
        raise UserError(f"{manifest_path}: missing {', '.join(missing)}")
    return manifest


def check_tokenizer(manifest: dict, tokenizer, path: str) -> None:
    """Refuse to train with a tokenizer other than the one the data was made with."""
    theirs, ours = manifest["tokenizer_fingerprint"], tokenizer_fingerprint(tokenizer)
    if theirs != ours:
        raise UserError(f"{path} was pretokenized with another tokenizer (fingerprint {theirs}, this one is {ours}) "
                        "— use the tokenizer it was made with, or pretokenize again with this one")


def per_layer_missing(path: str, stream_root: str) -> UserError:
    return UserError(f"Per-layer data file not found: {path} — run `moderngpt2 per-layer-vocab … "
                     f"--per-layer-output-prefix {stream_root}` first")


class ParquetBlocks:
    """Random access to the blocks of a list of Parquet shards."""

    def __init__(self, root: str, shards: list[str], column: str, block_size: int, missing_error=None):
        self.paths = [os.path.join(root, shard) for shard in shards]
        self.column, self.block_size = column, block_size
        self.group_starts = []  # per shard: first block of each row group, plus the end
        for path in self.paths:
            if missing_error is not None and not os.path.exists(path):
                raise missing_error(path)
            metadata = open_shard(path, column).metadata
            counts = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
            self.group_starts.append(np.concatenate([[0], np.cumsum(counts)]).tolist())
        self.shard_starts = np.concatenate([[0], np.cumsum([g[-1] for g in self.group_starts])]).tolist()
        self._files, self._cache = {}, OrderedDict()

    vocab_size = None  # set by BlockDataset for the main column: larger ids are refused as they are read

    def _check_statistics(self, path: str, metadata) -> None:
        """The largest id from the row groups' column statistics, where the writer kept them (free)."""
        if self.vocab_size is None:
            return
        for index in range(metadata.num_row_groups):
            statistics = metadata.row_group(index).column(0).statistics
            if statistics is not None and statistics.has_min_max:
                check_token_ids(int(statistics.max), self.vocab_size, path)

    def __len__(self) -> int:
        return self.shard_starts[-1]

    def __getstate__(self):
        return {**self.__dict__, "_files": {}, "_cache": OrderedDict()}

    def _read(self, shard: int, group: int) -> np.ndarray:
        """Decode one row group; damage or foreign ids become a DataFault naming the shard."""
        path = self.paths[shard]
        try:
            if shard not in self._files:
                self._files[shard] = open_shard(path, self.column)
            rows = read_row_group(self._files[shard], group, self.column, self.block_size)
        except (pa.ArrowException, OSError, ValueError) as error:
            raise DataFault(f"{path} is damaged (row group {group}: {first_line(error)}) — pretokenize "
                            "the data again; checkpoints saved so far are intact") from None
        if self.vocab_size is not None and rows.size:
            check_token_ids(int(rows.max()), self.vocab_size, path)
        return rows

    def verify(self) -> None:
        """Decode and check every row group (a full read of the data)."""
        for shard, starts in enumerate(self.group_starts):
            for group in range(len(starts) - 1):
                self._read(shard, group)

    def __getitem__(self, index: int) -> np.ndarray:
        shard = bisect.bisect_right(self.shard_starts, index) - 1
        within = index - self.shard_starts[shard]
        group = bisect.bisect_right(self.group_starts[shard], within) - 1
        key = (shard, group)
        rows = self._cache.get(key)
        if rows is None:
            rows = self._read(shard, group)
            self._cache[key] = rows
            if len(self._cache) > CACHED_ROW_GROUPS:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return rows[within - self.group_starts[shard][group]]


class MegatronBlocks:
    """Consecutive ``block_size`` windows of the token stream of a Megatron ``.bin``/``.idx`` pair."""

    def __init__(self, prefix: str, block_size: int):
        self.prefix, self.block_size = prefix, block_size
        index, _ = open_tokens(prefix)
        self.lengths = index.lengths
        self.count = int(index.lengths.sum(dtype=np.int64)) // block_size
        self._tokens = None

    def __len__(self) -> int:
        return self.count

    def __getstate__(self):
        return {**self.__dict__, "_tokens": None}

    vocab_size = None  # set by BlockDataset for the main column

    def __getitem__(self, index: int) -> np.ndarray:
        if self._tokens is None:
            self._tokens = open_tokens(self.prefix)[1]
        start = index * self.block_size
        block = np.asarray(self._tokens[start:start + self.block_size])
        if self.vocab_size is not None and block.size:
            check_token_ids(int(block.max()), self.vocab_size, self.prefix + ".bin")
        return block

    def verify(self) -> None:
        """Check every token id of the stream against the vocabulary."""
        tokens = open_tokens(self.prefix)[1]
        for start in range(0, tokens.size, VERIFY_TOKENS):
            piece = np.asarray(tokens[start:start + VERIFY_TOKENS])
            if piece.size:
                check_token_ids(int(piece.max()), self.vocab_size, self.prefix + ".bin")


class BlockDataset(Dataset):
    """Items ``{"input_ids": LongTensor[block_size]}`` (plus ``"per_layer_input_ids"`` when present)."""

    def __init__(self, columns: dict, block_size: int, manifest: dict | None = None):
        self.columns, self.block_size, self.manifest = columns, block_size, manifest
        self._length = len(columns[MAIN_COLUMN])

    def limit_token_ids(self, vocab_size: int) -> None:
        """Refuse main-column ids >= vocab_size: now where statistics tell, later as blocks are read."""
        main = self.columns[MAIN_COLUMN]
        main.vocab_size = vocab_size
        if isinstance(main, ParquetBlocks):
            for path in main.paths:
                main._check_statistics(path, open_shard(path, MAIN_COLUMN).metadata)

    def verify(self) -> None:
        """Read everything once: damaged shards and foreign token ids are found before training starts."""
        for store in self.columns.values():
            store.verify()

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"block {index} out of range (the split has {self._length})")
        return {name: torch.from_numpy(store[index].astype(np.int64)) for name, store in self.columns.items()}


# ----------------------------------------------------------------------------------------------- opening


def _split_entry(manifest: dict, split: str, path: str) -> dict:
    entry = manifest["splits"].get(split)
    if entry is None:
        raise UserError(f"{path} has no '{split}' split (has: {', '.join(manifest['splits'])})")
    if split == "validation" and entry["blocks"] == 0:
        raise UserError(f"the validation split of {path} is empty — pretokenize with --validation_split_percentage "
                        "or --eval_input")
    return entry


def _read_per_layer_manifest(per_layer_path: str, manifest: dict, split: str) -> dict:
    manifest_path = os.path.join(per_layer_path, MANIFEST)
    if not os.path.exists(manifest_path):
        raise per_layer_missing(manifest_path, per_layer_path)
    stream = read_json_object(manifest_path, "per-layer stream manifest")
    if stream.get("format") != PER_LAYER_FORMAT:
        raise UserError(f"{manifest_path}: not a {PER_LAYER_FORMAT} manifest")
    if stream.get("main_settings_hash") != manifest.get("settings_hash") or \
            stream.get("block_size") != manifest["block_size"] or \
            stream["splits"].get(split, {}).get("blocks") != manifest["splits"][split]["blocks"]:
        raise UserError(f"{per_layer_path} was made for other pretokenized data than this (block size, blocks or "
                        f"settings differ) — run `moderngpt2 per-layer-vocab … --per-layer-output-prefix "
                        f"{per_layer_path}` again on this data")
    return stream


def _from_directory(path: str, split: str, per_layer_path: str | None, block_size: int | None) -> BlockDataset:
    manifest = read_manifest(path)
    entry = _split_entry(manifest, split, path)
    storage = manifest.get("storage", "parquet")
    size = manifest["block_size"]
    if block_size is not None and block_size != size:
        if storage != "megatron":
            raise UserError(f"{path} holds blocks of {size} tokens, not {block_size} — pretokenize again with "
                            f"--block_size {block_size}")
        size = block_size
    if storage == "megatron":
        columns = {MAIN_COLUMN: MegatronBlocks(os.path.join(path, entry["prefix"]), size)}
    else:
        columns = {MAIN_COLUMN: ParquetBlocks(path, entry["shards"], MAIN_COLUMN, size)}
        if len(columns[MAIN_COLUMN]) != entry["blocks"]:
            raise UserError(f"{path}: the {split} shards hold {len(columns['input_ids'])} blocks but the manifest "
                            f"says {entry['blocks']} — the data is damaged; pretokenize again")
    if per_layer_path is not None:
        stream = _read_per_layer_manifest(per_layer_path, manifest, split)
        stream_entry = stream["splits"][split]
        if storage == "megatron":
            columns[PER_LAYER_COLUMN] = _aligned_megatron(os.path.join(per_layer_path, stream_entry["prefix"]),
                                                               columns[MAIN_COLUMN], per_layer_path)
        else:
            columns[PER_LAYER_COLUMN] = ParquetBlocks(
                per_layer_path, stream_entry["shards"], PER_LAYER_COLUMN, size,
                missing_error=lambda p: per_layer_missing(p, per_layer_path))
    return BlockDataset(columns, size, manifest)


def _aligned_megatron(prefix: str, main: MegatronBlocks, stream_root: str) -> MegatronBlocks:
    for suffix in (".bin", ".idx"):
        if not os.path.exists(prefix + suffix):
            raise per_layer_missing(prefix + suffix, stream_root)
    blocks = MegatronBlocks(prefix, main.block_size)
    if not np.array_equal(blocks.lengths, main.lengths):
        raise UserError(f"{prefix}: its documents do not line up with {main.prefix} — make the per-layer stream "
                        "again from this data")
    return blocks


def load_block_dataset(path: str, split: str = "train", per_layer_path: str | None = None,
                       block_size: int | None = None) -> BlockDataset:
    """A torch Dataset of one split of pretokenized data (or of a Megatron prefix cut into blocks)."""
    if os.path.isdir(path):
        return _from_directory(path, split, per_layer_path, block_size)
    if os.path.exists(path + ".bin") or os.path.exists(path + ".idx"):
        if block_size is None:
            raise UserError(f"{path} is a Megatron prefix: give --block_size N to cut its tokens into blocks")
        if split != "train":
            raise UserError(f"{path} is a single Megatron prefix: it has no '{split}' split — pass a separate "
                            "prefix for evaluation")
        columns = {MAIN_COLUMN: MegatronBlocks(path, block_size)}
        if per_layer_path is not None:
            columns[PER_LAYER_COLUMN] = _aligned_megatron(per_layer_path, columns[MAIN_COLUMN], per_layer_path)
        return BlockDataset(columns, block_size)
    raise UserError(f"pretokenized data not found: {path} — run `moderngpt2 pretokenize ... --output_path {path}`")
