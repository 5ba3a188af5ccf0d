"""Chunks of raw records -> token arrays, in order, on threads or worker processes.

A ``ChunkEncoder`` decodes a ``RawChunk`` (JSON parsing, UTF-8 checks), tokenizes its documents with the
Rust tokenizer's batch encoder, and returns one flat int32 array: every document followed by EOS (and
preceded by BOS when the tokenizer has a BOS different from EOS). It also returns each document's length
and a seeded 64-bit hash of its text, which decides the train/validation split.

``encode_in_order`` runs the encoder over a stream of chunks with a bounded number in flight, on two
background threads (``num_proc=1``: the Rust encoder is multi-threaded and releases the GIL, so one thread's
Python work overlaps the other's encoding) or on ``num_proc`` processes (each single-threaded). Results
come back in input order either way, so the output does not depend on ``num_proc``.

A document longer than ``piece_chars`` (64K characters) is tokenized in pieces of about that size, a few
pieces at a time, so memory stays bounded whatever one document's size (the Rust encoder keeps ~100 bytes
per token of bookkeeping: a 50 MB document encoded whole needed several GB). Pieces are cut just before a
space that stands between two non-space characters, where byte-level BPE and Metaspace pre-tokenizers
split anyway, so the tokens are the same as the whole document's; a stretch of ``piece_chars`` characters
with no such space is cut before a newline, or failing that anywhere, where the tokens at the cut may differ.
"""

import hashlib
import itertools
import multiprocessing
import os
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .sources import Position, RawChunk, decode_chunk

THREADS = 2
PIECE_CHARS = 1 << 16
PIECES_PER_BATCH = 16


def _cut(text: str, start: int, end: int) -> int:
    """An index in (start, end] to cut `text` at: before a lone space, else before a newline, else `end`."""
    for separator in (" ", "\n"):
        high = end
        while True:
            index = text.rfind(separator, start + 1, high)
            if index <= start:
                break
            if not text[index - 1].isspace() and index + 1 < len(text) and not text[index + 1].isspace():
                return index
            high = index
    return end


def split_long_text(text: str, piece_chars: int) -> list[str]:
    """`text` in consecutive pieces of at most `piece_chars` characters (see the module notes on the cuts)."""
    pieces, start = [], 0
    while len(text) - start > piece_chars:
        cut = _cut(text, start, start + piece_chars)
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


@dataclass
class EncodedChunk:
    tokens: np.ndarray  # int32, the documents with their separators, back to back
    lengths: np.ndarray  # int64, tokens per document (separators included)
    digests: np.ndarray  # uint64, seeded hash of each document's text
    raw_bytes: int  # bytes of input read for this chunk
    skipped: Counter
    end: Position


def text_digest(text: str, seed: int = 0) -> int:
    """A seeded 64-bit hash of a document, the same in every process and on every run."""
    key = str(seed).encode()
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=key).digest(), "little")


@dataclass
class EncoderSettings:
    tokenizer_json: str  # the backend tokenizer, serialised: cheap to send to a worker process
    eos_id: int
    bos_id: int | None  # prepended to each document when set
    text_field: str = "text"
    on_bad_record: str = "error"
    seed: int = 0
    piece_chars: int = PIECE_CHARS  # longer documents are tokenized in pieces (bounded memory)

    @classmethod
    def for_tokenizer(cls, tokenizer, **kwargs) -> "EncoderSettings":
        return cls(tokenizer.backend_tokenizer.to_str(), tokenizer.eos_token_id, distinct_bos(tokenizer), **kwargs)


def distinct_bos(tokenizer) -> int | None:
    """The BOS id when it differs from EOS (then each document starts with it), else None (GPT-2 style)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return bos if bos is not None and bos != eos else None


class ChunkEncoder:
    def __init__(self, settings: EncoderSettings):
        from tokenizers import Tokenizer

        self.settings = settings
        self.tokenizer = Tokenizer.from_str(settings.tokenizer_json)
        self._encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)

    def _long_document_ids(self, text: str) -> np.ndarray:
        """The ids of one long document, encoded a few bounded pieces at a time."""
        pieces = split_long_text(text, self.settings.piece_chars)
        arrays = []
        for start in range(0, len(pieces), PIECES_PER_BATCH):
            batch = self._encode(pieces[start:start + PIECES_PER_BATCH], add_special_tokens=False)
            arrays.extend(np.asarray(encoding.ids, dtype=np.int32) for encoding in batch)
        return np.concatenate(arrays)

    def _ids(self, texts: list[str]) -> list:
        """Token ids per document: lists from one batch call, or arrays where some document is long."""
        if all(len(text) <= self.settings.piece_chars for text in texts):
            return [e.ids for e in self._encode(texts, add_special_tokens=False)] if texts else []
        return [self._long_document_ids(text) if len(text) > self.settings.piece_chars
                else np.asarray(self._encode([text], add_special_tokens=False)[0].ids, dtype=np.int32)
                for text in texts]

    def __call__(self, chunk: RawChunk) -> EncodedChunk:
        s = self.settings
        texts, skipped = decode_chunk(chunk, s.text_field, s.on_bad_record)
        ids = self._ids(texts)
        body_lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        if ids and isinstance(ids[0], np.ndarray):
            flat = np.concatenate(ids)
        else:
            flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(body_lengths.sum()))
        ends = np.cumsum(body_lengths)
        tokens = np.insert(flat, ends, np.int32(s.eos_id))
        lengths = body_lengths + 1
        if s.bos_id is not None:
            starts = np.concatenate([[0], ends[:-1]]) if len(ends) else ends
            tokens = np.insert(tokens, starts + np.arange(len(starts)), np.int32(s.bos_id))
            lengths = lengths + 1
        digests = np.fromiter((text_digest(t, s.seed) for t in texts), dtype=np.uint64, count=len(texts))
        return EncodedChunk(tokens.astype(np.int32, copy=False), lengths, digests, chunk.nbytes, skipped, chunk.end)


_worker_encoder = None


def _init_worker(settings: EncoderSettings) -> None:
    global _worker_encoder
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    _worker_encoder = ChunkEncoder(settings)


def _encode_in_worker(chunk: RawChunk) -> EncodedChunk:
    return _worker_encoder(chunk)


def _process_context():
    # fork starts workers instantly; where it is unavailable (macOS, Windows) spawn is the safe default
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def encode_in_order(chunks, settings: EncoderSettings, num_proc: int = 1):
    """Encoded chunks in input order, with at most a few chunks per worker in flight."""
    if num_proc <= 1:
        # two threads: while one waits in the Rust encoder (GIL released), the other does the Python work
        encoder = ChunkEncoder(settings)
        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            yield from _ordered(chunks, lambda chunk: pool.submit(encoder, chunk), depth=THREADS + 1,
                                get=lambda future: future.result())
        return
    pool = _process_context().Pool(num_proc, initializer=_init_worker, initargs=(settings,))
    try:
        yield from _ordered(chunks, lambda chunk: pool.apply_async(_encode_in_worker, (chunk,)),
                            depth=2 * num_proc, get=lambda result: result.get())
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _ordered(chunks, submit, depth, get):
    pending = deque()
    for chunk in chunks:
        pending.append(submit(chunk))
        if len(pending) >= depth:
            yield get(pending.popleft())
    while pending:
        yield get(pending.popleft())
