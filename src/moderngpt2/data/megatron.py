"""Megatron's indexed dataset format (MMIDIDX version 1): ``PREFIX.bin`` + ``PREFIX.idx``.

``PREFIX.bin`` is every document's tokens back to back, in the index's dtype, little-endian.
``PREFIX.idx`` is, in order (all integers little-endian):

====================  =========================  ==================================================
bytes                 field                      value
====================  =========================  ==================================================
9                     magic                      ``b"MMIDIDX\\x00\\x00"``
8 (uint64)            version                    1
1 (uint8)             dtype code                 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64,
                                                 6 float64, 7 float32, 8 uint16
8 (uint64)            sequence count  S          one sequence per document here
8 (uint64)            document count  D          S + 1 (the document index has a leading 0)
4 * S (int32)         sequence lengths           tokens per sequence
8 * S (int64)         sequence pointers          byte offset of each sequence in ``.bin``
8 * D (int64)         document index             0, 1, ..., S (sequence index where each document ends)
====================  =========================  ==================================================

Tokens are ``uint16`` when the vocabulary has fewer than 65500 entries, ``int32`` otherwise (Megatron's
rule). The writer here is resumable the same way as the Parquet one: tokens and lengths are appended to
``.partial`` files that a checkpoint can truncate back; the index is written, atomically, at the end.
"""

import os
import struct
from dataclasses import dataclass

import numpy as np

from ..errors import UserError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
               8: np.uint16}
CODE_OF_DTYPE = {np.dtype(t): code for code, t in DTYPE_CODES.items()}


def token_dtype(vocab_size: int):
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def index_bytes(dtype, lengths) -> bytes:
    """The complete ``.idx`` content for documents of the given lengths (one sequence each)."""
    dtype = np.dtype(dtype)
    lengths = np.asarray(lengths, dtype=np.int64)
    pointers = np.zeros(lengths.size, dtype=np.int64)
    np.cumsum(lengths[:-1] * dtype.itemsize, out=pointers[1:])
    document_index = np.arange(lengths.size + 1, dtype=np.int64)
    header = MAGIC + struct.pack("<Q", VERSION) + struct.pack("<B", CODE_OF_DTYPE[dtype])
    header += struct.pack("<Q", lengths.size) + struct.pack("<Q", document_index.size)
    return (header + lengths.astype("<i4").tobytes() + pointers.astype("<i8").tobytes()
            + document_index.astype("<i8").tobytes())


@dataclass
class MegatronIndex:
    dtype: np.dtype
    lengths: np.ndarray  # int32 per sequence
    pointers: np.ndarray  # int64 byte offsets
    document_index: np.ndarray  # int64, sequence index boundaries of documents


def read_index(idx_path: str) -> MegatronIndex:
    """Parse a ``.idx`` file; a file that is not MMIDIDX version 1 is a one-line error."""
    try:
        with open(idx_path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise UserError(f"cannot read Megatron index {idx_path}: {error.strerror or error}") from None
    fixed = len(MAGIC) + 8 + 1 + 8 + 8
    if len(data) < fixed or data[:len(MAGIC)] != MAGIC:
        raise UserError(f"{idx_path}: not a Megatron MMIDIDX index file")
    offset = len(MAGIC)
    (version,) = struct.unpack_from("<Q", data, offset)
    (code,) = struct.unpack_from("<B", data, offset + 8)
    sequences, documents = struct.unpack_from("<QQ", data, offset + 9)
    if version != VERSION or code not in DTYPE_CODES:
        raise UserError(f"{idx_path}: unsupported MMIDIDX version {version} or dtype code {code}")
    expected = fixed + sequences * 12 + documents * 8
    if len(data) < expected:
        raise UserError(f"{idx_path}: truncated index ({len(data)} bytes, expected {expected})")
    lengths = np.frombuffer(data, dtype="<i4", count=sequences, offset=fixed)
    pointers = np.frombuffer(data, dtype="<i8", count=sequences, offset=fixed + sequences * 4)
    document_index = np.frombuffer(data, dtype="<i8", count=documents, offset=fixed + sequences * 12)
    return MegatronIndex(np.dtype(DTYPE_CODES[code]), lengths, pointers, document_index)


def open_tokens(prefix: str):
    """The index and a read-only memory map of all tokens of ``PREFIX.bin``."""
    for suffix in (".idx", ".bin"):
        if not os.path.exists(prefix + suffix):
            raise UserError(f"Megatron data file not found: {prefix}{suffix}")
    index = read_index(prefix + ".idx")
    total = int(index.lengths.sum(dtype=np.int64))
    size = os.path.getsize(prefix + ".bin")
    if size != total * index.dtype.itemsize:
        raise UserError(f"{prefix}.bin has {size} bytes but its index describes {total} tokens of "
                        f"{index.dtype.name} — the pair does not belong together")
    tokens = np.memmap(prefix + ".bin", dtype=index.dtype, mode="r") if total else np.zeros(0, index.dtype)
    return index, tokens


class MegatronSplitWriter:
    """Appends whole documents to ``PREFIX.bin`` and writes ``PREFIX.idx`` at the end, resumably."""

    def __init__(self, prefix: str, dtype):
        self.prefix, self.dtype = prefix, np.dtype(dtype)
        self.documents = self.tokens = 0
        self._bin = self._lengths = None

    def _open(self):
        if self._bin is None:
            os.makedirs(os.path.dirname(self.prefix) or ".", exist_ok=True)
            self._bin = open(self.prefix + ".bin.partial", "ab")
            self._lengths = open(self.prefix + ".lengths.partial", "ab")

    def state(self) -> dict:
        for f in (self._bin, self._lengths):
            if f is not None:
                f.flush()
        return {"documents": self.documents, "tokens": self.tokens}

    def restore(self, state: dict) -> None:
        self.documents, self.tokens = state["documents"], state["tokens"]
        # a run killed inside finish() has already moved files into place: move them back
        if not os.path.exists(self.prefix + ".bin.partial") and os.path.exists(self.prefix + ".bin"):
            os.replace(self.prefix + ".bin", self.prefix + ".bin.partial")
        if not os.path.exists(self.prefix + ".lengths.partial") and os.path.exists(self.prefix + ".idx"):
            with open(self.prefix + ".lengths.partial", "wb") as f:
                f.write(read_index(self.prefix + ".idx").lengths.astype("<i4").tobytes())
        for path, size in ((self.prefix + ".bin.partial", self.tokens * self.dtype.itemsize),
                           (self.prefix + ".lengths.partial", self.documents * 4)):
            if os.path.exists(path):
                with open(path, "r+b") as f:
                    f.truncate(size)
            elif size:
                raise UserError(f"{path} is missing: the unfinished run cannot resume — pass --overwrite")

    def remove_leftovers(self) -> None:
        for suffix in (".bin.tmp", ".idx.tmp"):
            if os.path.exists(self.prefix + suffix):
                os.remove(self.prefix + suffix)
        if not self.documents:
            for suffix in (".bin.partial", ".lengths.partial"):
                if os.path.exists(self.prefix + suffix):
                    os.remove(self.prefix + suffix)

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        self._open()
        self._bin.write(tokens.astype(self.dtype.newbyteorder("<"), copy=False).tobytes())
        self._lengths.write(np.asarray(lengths, dtype="<i4").tobytes())
        self.documents += int(len(lengths))
        self.tokens += int(tokens.size)

    def after_checkpoint(self) -> None:
        pass

    def finish(self, block_size: int) -> dict:
        """Write the index, then move the tokens into place; returns the split's manifest entry."""
        self._open()
        self.close()
        lengths = np.fromfile(self.prefix + ".lengths.partial", dtype="<i4")
        with open(self.prefix + ".idx.tmp", "wb") as f:
            f.write(index_bytes(self.dtype, lengths))
        os.replace(self.prefix + ".idx.tmp", self.prefix + ".idx")
        os.replace(self.prefix + ".bin.partial", self.prefix + ".bin")
        os.remove(self.prefix + ".lengths.partial")
        name = os.path.basename(self.prefix)
        return {"documents": self.documents, "tokens": self.tokens, "blocks": self.tokens // block_size,
                "dropped_tail_tokens": self.tokens % block_size, "prefix": name,
                "shards": [name + ".bin", name + ".idx"], "dtype": self.dtype.name}

    def close(self) -> None:
        for f in (self._bin, self._lengths):
            if f is not None:
                f.close()
        self._bin = self._lengths = None
