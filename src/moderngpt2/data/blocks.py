"""Parquet shards of fixed-length token blocks: the layout, the resumable writer, and row-group reads.

Layout of one shard (``OUT/<split>/shard-00000.parquet``): a single column (``input_ids``, or
``per_layer_input_ids`` for per-layer streams) of type ``list<int32>``, every row exactly ``block_size``
long, row groups of ``rows_per_group(block_size)`` rows (64K tokens, so a random read decodes 256 KB),
zstd compression, no dictionary, no statistics. Given the same blocks, the bytes of a shard are the same.

The writer cuts one split's token stream into blocks in order. Full blocks are appended to a raw
``.shard-XXXXX.partial`` file; once a shard is full it is converted to Parquet (written to ``.tmp`` and
renamed). Its ``state()`` (shard index, blocks in the partial file, the tail shorter than a block) is
what a checkpoint stores; ``restore`` truncates the partial file back to it, so a run killed at any point
and resumed produces the same bytes.
"""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UserError
from .layout import MAIN_COLUMN

ROW_GROUP_TOKENS = 1 << 16
COMPRESSION = "zstd"


def rows_per_group(block_size: int) -> int:
    return max(1, ROW_GROUP_TOKENS // block_size)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def _table(blocks: np.ndarray, column: str) -> pa.Table:
    rows, block_size = blocks.shape
    offsets = pa.array(np.arange(0, (rows + 1) * block_size, block_size, dtype=np.int32))
    values = pa.array(np.ascontiguousarray(blocks, dtype=np.int32).reshape(-1))
    return pa.table({column: pa.ListArray.from_arrays(offsets, values)})


def write_shard(path: str, blocks: np.ndarray, column: str = MAIN_COLUMN) -> None:
    """Write a 2-D int32 array of blocks as one Parquet shard, atomically (``.tmp`` then rename)."""
    group = rows_per_group(blocks.shape[1])
    write_shard_groups(path, (blocks[start:start + group] for start in range(0, blocks.shape[0], group)),
                       column)


def write_shard_groups(path: str, groups, column: str = MAIN_COLUMN) -> None:
    """Write row groups (2-D arrays of ``rows_per_group`` blocks; the last may be shorter) as one shard."""
    schema = pa.schema([(column, pa.list_(pa.int32()))])
    tmp = path + ".tmp"
    with pq.ParquetWriter(tmp, schema, compression=COMPRESSION, use_dictionary=False,
                          write_statistics=False) as writer:
        for blocks in groups:
            writer.write_table(_table(blocks, column), row_group_size=rows_per_group(blocks.shape[1]))
    os.replace(tmp, path)


def open_shard(path: str, column: str):
    """A ``ParquetFile`` of a block shard, or a one-line error for a missing or unreadable one."""
    if not os.path.exists(path):
        raise UserError(f"shard not found: {path} — the pretokenized data is incomplete; run pretokenize again")
    try:
        shard = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise UserError(f"cannot read Parquet shard {path}: {error}") from None
    if column not in shard.schema_arrow.names:
        raise UserError(f"{path}: no column '{column}' (columns: {', '.join(shard.schema_arrow.names)})")
    return shard


def read_row_group(shard, index: int, column: str, block_size: int) -> np.ndarray:
    """Row group ``index`` of a shard as an int32 array of shape (rows, block_size)."""
    values = shard.read_row_group(index, columns=[column]).column(0).combine_chunks().flatten()
    return values.to_numpy().reshape(-1, block_size)


def iter_shard_blocks(path: str, column: str, block_size: int):
    """All row groups of a shard, in order, as 2-D int32 arrays."""
    shard = open_shard(path, column)
    for index in range(shard.metadata.num_row_groups):
        yield read_row_group(shard, index, column, block_size)


class ParquetSplitWriter:
    """Cuts one split's token stream into blocks and writes them as Parquet shards, resumably."""

    def __init__(self, directory: str, block_size: int, shard_blocks: int, column: str = MAIN_COLUMN):
        self.directory, self.block_size, self.shard_blocks, self.column = directory, block_size, shard_blocks, column
        self.shard = 0  # index of the shard being filled
        self.partial_blocks = 0
        self.carry = np.zeros(0, dtype=np.int32)  # tokens after the last full block
        self.blocks = self.tokens = self.documents = 0
        self.shards: list[str] = []
        self.obsolete: list[str] = []  # partial files of finished shards, removed after the next checkpoint
        self._partial = None

    # -- checkpoint state ------------------------------------------------------------------------------
    def state(self) -> dict:
        if self._partial is not None:
            self._partial.flush()
        return {"shard": self.shard, "partial_blocks": self.partial_blocks, "carry": self.carry.tolist(),
                "blocks": self.blocks, "tokens": self.tokens, "documents": self.documents, "shards": self.shards}

    def restore(self, state: dict) -> None:
        self.shard, self.partial_blocks = state["shard"], state["partial_blocks"]
        self.carry = np.asarray(state["carry"], dtype=np.int32)
        self.blocks, self.tokens, self.documents = state["blocks"], state["tokens"], state["documents"]
        self.shards = list(state["shards"])
        path = self._partial_path(self.shard)
        if self.partial_blocks:
            if not os.path.exists(path):
                raise UserError(f"{path} is missing: the unfinished run cannot resume — pass --overwrite")
            with open(path, "r+b") as f:  # forget blocks appended after the checkpoint
                f.truncate(self.partial_blocks * self.block_size * 4)
        elif os.path.exists(path):
            os.remove(path)

    def remove_leftovers(self) -> None:
        """Delete partial files and temporaries that no checkpointed state refers to."""
        if not os.path.isdir(self.directory):
            return
        keep = os.path.basename(self._partial_path(self.shard)) if self.partial_blocks else None
        for name in os.listdir(self.directory):
            if (name.endswith(".tmp") or name.endswith(".partial")) and name != keep:
                os.remove(os.path.join(self.directory, name))

    # -- writing ---------------------------------------------------------------------------------------
    def _partial_path(self, index: int) -> str:
        return os.path.join(self.directory, f".shard-{index:05d}.partial")

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append whole documents (with their separators) to the stream; ``lengths`` are per document."""
        self.tokens += int(tokens.size)
        self.documents += int(len(lengths))
        stream = np.concatenate([self.carry, tokens.astype(np.int32, copy=False)])
        full = stream.size // self.block_size
        self.carry = stream[full * self.block_size:].copy()
        blocks = stream[:full * self.block_size].reshape(full, self.block_size)
        while blocks.shape[0]:
            take = min(self.shard_blocks - self.partial_blocks, blocks.shape[0])
            self._append(blocks[:take])
            blocks = blocks[take:]

    def _append(self, blocks: np.ndarray) -> None:
        if self._partial is None:
            os.makedirs(self.directory, exist_ok=True)
            self._partial = open(self._partial_path(self.shard), "ab")
        self._partial.write(np.ascontiguousarray(blocks, dtype="<i4").tobytes())
        self.partial_blocks += blocks.shape[0]
        self.blocks += blocks.shape[0]
        if self.partial_blocks == self.shard_blocks:
            self._seal()

    def _seal(self) -> None:
        """Convert the full partial file into the Parquet shard."""
        self.close()
        path = self._partial_path(self.shard)
        blocks = np.memmap(path, dtype="<i4", mode="r").reshape(-1, self.block_size)  # a shard can be GBs
        write_shard(os.path.join(self.directory, shard_name(self.shard)), blocks, self.column)
        del blocks
        self.shards.append(shard_name(self.shard))
        self.obsolete.append(path)
        self.shard += 1
        self.partial_blocks = 0

    def after_checkpoint(self) -> None:
        """Partial files of sealed shards may go once a checkpoint no longer needs them."""
        for path in self.obsolete:
            if os.path.exists(path):
                os.remove(path)
        self.obsolete.clear()

    def finish(self, block_size: int | None = None) -> dict:
        """Seal the last, shorter shard; the tail shorter than a block is dropped and counted."""
        if self.partial_blocks:
            self._seal()
        return {"documents": self.documents, "tokens": self.tokens, "blocks": self.blocks,
                "dropped_tail_tokens": int(self.carry.size), "shards": list(self.shards)}

    def close(self) -> None:
        if self._partial is not None:
            self._partial.close()
            self._partial = None
