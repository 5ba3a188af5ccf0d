"""Reading text: JSON Lines, plain text, Parquet, directories and globs of them, and `datasets` sources.

Reading happens in two steps so that the expensive one can run in worker processes:
``iter_chunks`` cuts the input into ``RawChunk``s of undecoded records (bytes lines, or values of a text
column) and remembers, after every chunk, the exact ``Position`` to resume from; ``decode_chunk`` turns a
chunk into documents, with a one-line error naming the file and line of a bad record (or skipping and
counting it). ``iter_texts`` chains both for callers that just want strings.

Record numbering: ``FILE:LINE`` for line-based files (1-based, blank lines are not records), ``FILE: row N``
(0-based) for Parquet and `datasets` sources.
"""

import glob
import gzip
import json
import os
from collections import Counter
from dataclasses import dataclass, field

from ..errors import UserError, first_line

LINE_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".txt": "txt", ".text": "txt"}
SAVED_DATASET_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")
CHUNK_BYTES = 1 << 20  # the unit of work: big enough to amortise overhead, small enough to lose little on a kill
SKIP_HINT = "or pass --on_bad_record skip"
_MISSING = object()


@dataclass(frozen=True)
class Source:
    """One input, resolved: a file of a known kind, a `datasets` source, or the interleaved C4 languages."""

    kind: str  # jsonl | txt | parquet | datasets | disk | c4
    location: str  # file path, dataset name or path; for c4 the repository
    config: str | None = None  # `datasets` config; for c4 the comma-separated languages

    def describe(self) -> str:
        if self.kind == "c4":
            return f"C4 {self.config} ({self.location})"
        return self.location + (f" [{self.config}]" if self.config else "")


@dataclass
class Position:
    """Where reading stopped: the source index, that source's own resume state, and records read in total."""

    source: int = 0
    state: dict = field(default_factory=dict)
    records: int = 0

    def to_json(self) -> dict:
        return {"source": self.source, "state": self.state, "records": self.records}

    @classmethod
    def from_json(cls, data: dict) -> "Position":
        return cls(data["source"], data["state"], data["records"])


@dataclass
class RawChunk:
    """Undecoded records of one source: ``items`` are (record number, bytes line or column value)."""

    origin: str
    kind: str  # jsonl | txt | rows
    items: list
    end: Position
    nbytes: int = 0


# ----------------------------------------------------------------------------------------------- resolving


def _file_kind(path: str) -> str | None:
    name = path[:-3] if path.endswith(".gz") else path
    suffix = os.path.splitext(name)[1].lower()
    if suffix == ".parquet" and not path.endswith(".gz"):
        return "parquet"
    return LINE_SUFFIXES.get(suffix)


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or _file_kind(spec) is not None or spec.endswith(".gz")


def _file_source(path: str) -> Source:
    kind = _file_kind(path)
    if kind is None:
        raise UserError(f"{path}: unsupported file type — use .jsonl/.json, .txt (optionally .gz) or .parquet")
    return Source(kind, path)


def _directory_sources(path: str) -> list[Source]:
    if any(os.path.exists(os.path.join(path, marker)) for marker in SAVED_DATASET_MARKERS):
        return [Source("disk", path)]
    files = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".") and _file_kind(f)]
    if not files:
        raise UserError(f"{path}: directory holds no .jsonl, .json, .txt or .parquet file")
    return [_file_source(f) for f in files]


def _dataset_source(spec: str) -> Source:
    name, _, config = spec.partition(":")
    return Source("datasets", name, config or None)


def resolve_sources(specs: list[str], c4_dataset: str = "allenai/c4") -> list[Source]:
    """Turn the user's input strings into concrete sources, in a deterministic order."""
    if not specs:
        raise UserError("no input given — pass --input FILE ... (or --c4_langs en ja ...)")
    sources = []
    for spec in specs:
        spec = os.path.expanduser(spec)
        if spec.startswith("c4:"):
            sources.append(Source("c4", c4_dataset, spec[3:]))
        elif spec.startswith("datasets:"):
            sources.append(_dataset_source(spec[len("datasets:"):]))
        elif any(ch in spec for ch in "*?["):
            matches = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not matches:
                raise UserError(f"no file matches {spec}")
            sources += [_file_source(p) for p in matches]
        elif os.path.isdir(spec):
            sources += _directory_sources(spec)
        elif os.path.isfile(spec):
            sources.append(_file_source(spec))
        elif _looks_like_path(spec):
            raise UserError(f"Input file not found: {spec}")
        else:
            sources.append(_dataset_source(spec))
    return sources


# ----------------------------------------------------------------------------------------------- readers
# A reader yields (record number, raw record) and, after each record, knows the state to resume after it.


class _LineFileReader:
    """Lines of a (possibly gzipped) text file, read in large blocks; blank lines are not records."""

    def __init__(self, source: Source, state: dict):
        self.path = source.location
        self.offset = state.get("offset", 0)
        self.line = state.get("line", 0)  # lines consumed so far

    def state(self) -> dict:
        return {"offset": self.offset, "line": self.line}

    def __iter__(self):
        opener = gzip.open if self.path.endswith(".gz") else open
        try:
            handle = opener(self.path, "rb")
        except OSError as error:
            raise UserError(f"cannot read {self.path}: {error.strerror or error}") from None
        with handle:
            handle.seek(self.offset)
            pending = b""
            while True:
                try:
                    block = handle.read(CHUNK_BYTES)
                except (OSError, EOFError, gzip.BadGzipFile) as error:
                    raise UserError(f"cannot read {self.path}: {error}") from None
                data = pending + block
                if block:  # keep the unfinished last line for the next block
                    cut = data.rfind(b"\n") + 1
                    data, pending = data[:cut], data[cut:]
                lines = data.split(b"\n")
                last_has_newline = lines[-1] == b""
                if last_has_newline:
                    lines.pop()
                for i, raw in enumerate(lines):
                    self.offset += len(raw) + (1 if i < len(lines) - 1 or last_has_newline else 0)
                    self.line += 1
                    if raw.endswith(b"\r"):
                        raw = raw[:-1]
                    if raw.strip():
                        yield self.line, raw
                if not block:
                    return


class _ParquetReader:
    """The text column of a Parquet file, row by row; unreadable files are a one-line error."""

    def __init__(self, source: Source, state: dict, text_field: str):
        self.path, self.text_field = source.location, text_field
        self.row = state.get("row", 0)

    def state(self) -> dict:
        return {"row": self.row}

    def __iter__(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as error:
            raise UserError(f"cannot read Parquet file {self.path}: {error} — is it a complete Parquet file?") from None
        columns = parquet.schema_arrow.names
        if self.text_field not in columns:
            raise UserError(f"{self.path}: no column '{self.text_field}' (columns: {', '.join(columns)}) — "
                            "pick one with --text_field")
        first_group, start = 0, 0
        metadata = parquet.metadata
        while first_group < metadata.num_row_groups and start + metadata.row_group(first_group).num_rows <= self.row:
            start += metadata.row_group(first_group).num_rows
            first_group += 1
        row = start
        try:
            groups = list(range(first_group, metadata.num_row_groups))
            for batch in parquet.iter_batches(batch_size=4096, row_groups=groups, columns=[self.text_field]):
                for value in batch.column(0).to_pylist():
                    if row >= self.row:
                        self.row = row + 1
                        yield row, value
                    row += 1
        except (pa.ArrowException, OSError) as error:
            raise UserError(f"cannot read Parquet file {self.path}: {error}") from None


def _load_dataset(source: Source, split: str):
    """A streaming `datasets` source (hub name, local repository or script), or a ``save_to_disk`` folder."""
    import datasets

    try:
        if source.kind == "disk":
            loaded = datasets.load_from_disk(source.location)
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise UserError(f"{source.location}: no split '{split}' (has: {', '.join(loaded)})")
                loaded = loaded[split]
            return loaded.to_iterable_dataset()
        return datasets.load_dataset(source.location, source.config, split=split, streaming=True)
    except UserError:
        raise
    except Exception as error:  # datasets raises many types (FileNotFoundError, ValueError, ConnectionError ...)
        raise UserError(f"cannot load dataset '{source.describe()}' (split {split}) with datasets: "
                        f"{first_line(error)}") from None


class _DatasetReader:
    """Records of a streaming `datasets` source; resumes through the dataset's own ``state_dict``."""

    def __init__(self, source: Source, state: dict, text_field: str, split: str):
        self.source, self.text_field, self.split = source, text_field, split
        self.row = state.get("row", 0)
        self.dataset_state = state.get("dataset_state")
        self.dataset = None

    def state(self) -> dict:
        return {"row": self.row, "dataset_state": self.dataset.state_dict() if self.dataset else self.dataset_state}

    def __iter__(self):
        self.dataset = _load_dataset(self.source, self.split)
        if self.dataset_state is not None:
            self.dataset.load_state_dict(self.dataset_state)
        for record in self.dataset:
            value = record.get(self.text_field, _MISSING) if isinstance(record, dict) else record
            if value is _MISSING:
                fields = ", ".join(record)
                raise UserError(f"{self.source.describe()}: no field '{self.text_field}' (fields: {fields}) — "
                                "pick one with --text_field")
            self.row += 1
            yield self.row - 1, value


class _C4Reader:
    """The C4 configs of several languages, interleaved one record at a time until every one is exhausted."""

    def __init__(self, source: Source, state: dict, split: str):
        langs = [lang for lang in source.config.split(",") if lang]
        states = state.get("langs", [{} for _ in langs])
        self.readers = [_DatasetReader(Source("datasets", source.location, lang), s, "text", split)
                        for lang, s in zip(langs, states)]
        self.turn = state.get("turn", 0)
        self.done = state.get("done", [False] * len(langs))

    def state(self) -> dict:
        return {"langs": [r.state() for r in self.readers], "turn": self.turn, "done": list(self.done)}

    def __iter__(self):
        iterators = [iter(r) for r in self.readers]
        while not all(self.done):
            index = self.turn
            self.turn = (self.turn + 1) % len(iterators)
            if self.done[index]:
                continue
            try:
                _, value = next(iterators[index])
            except StopIteration:
                self.done[index] = True
                continue
            yield sum(r.row for r in self.readers) - 1, value



def _reader(source: Source, state: dict, text_field: str, split: str):
    if source.kind in ("jsonl", "txt"):
        return _LineFileReader(source, state)
    if source.kind == "parquet":
        return _ParquetReader(source, state, text_field)
    if source.kind == "c4":
        return _C4Reader(source, state, split)
    return _DatasetReader(source, state, text_field, split)


def iter_chunks(sources: list[Source], start: Position | None = None, limit: int | None = None,
                text_field: str = "text", split: str = "train", chunk_bytes: int = CHUNK_BYTES):
    """Undecoded chunks of about ``chunk_bytes`` from ``start`` on, each with the position just after it.

    The chunking depends only on the input, so the same input always gives the same chunks.
    """
    position = start or Position()
    records = position.records
    for index in range(position.source, len(sources)):
        if limit is not None and records >= limit:
            return
        source = sources[index]
        state = position.state if index == position.source else {}
        reader = _reader(source, state, text_field, split)
        kind = source.kind if source.kind in ("jsonl", "txt") else "rows"
        items, nbytes = [], 0
        for number, raw in reader:
            items.append((number, raw))
            records += 1
            nbytes += len(raw) if isinstance(raw, (bytes, str)) else 16
            at_limit = limit is not None and records >= limit
            if nbytes >= chunk_bytes or at_limit:
                yield RawChunk(source.describe(), kind, items, Position(index, reader.state(), records), nbytes)
                items, nbytes = [], 0
                if at_limit:
                    return
        end = Position(index + 1, {}, records)
        if items:
            yield RawChunk(source.describe(), kind, items, end, nbytes)
        else:
            # an empty tail still advances the position, so a resume does not reopen a finished source
            yield RawChunk(source.describe(), kind, [], end, 0)


# ----------------------------------------------------------------------------------------------- decoding


def _utf8_error(error: UnicodeError, raw) -> str:
    if isinstance(error, UnicodeDecodeError):
        return f"invalid UTF-8 (byte 0x{raw[error.start]:02x} at byte {error.start + 1} of the line)"
    return "invalid UTF-8 (a lone surrogate escape such as \\ud800 in the text)"


def _decode_record(kind: str, raw, text_field: str):
    """(text, None) for a good record, (None, (reason, message)) for a bad one."""
    if kind in ("jsonl", "txt"):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            return None, ("invalid UTF-8", _utf8_error(error, raw) + " — re-encode the file as UTF-8")
        if kind == "txt":
            value = line
        else:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                return None, ("malformed JSON", f"malformed JSON ({error.msg}: column {error.colno}) — fix the line")
            if not isinstance(record, dict):
                return None, ("malformed JSON", f"expected a JSON object with a '{text_field}' field, "
                                                f"got {type(record).__name__}")
            if text_field not in record:
                return None, ("missing text field", f"no '{text_field}' field (the record has: "
                                                    f"{', '.join(record) or 'no field'}) — pick one with --text_field")
            value = record[text_field]
    else:
        value = raw
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, ("empty document", f"empty document (the '{text_field}' text is blank) — remove it")
    if not isinstance(value, str):
        return None, ("not text", f"the '{text_field}' field holds {type(value).__name__}, not text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        return None, ("invalid UTF-8", _utf8_error(error, None))
    return value, None


def decode_chunk(chunk: RawChunk, text_field: str = "text", on_bad_record: str = "error"):
    """The documents of a chunk and a Counter of skipped records by reason.

    With ``on_bad_record="error"`` the first bad record raises a UserError naming its file and line.
    """
    texts, skipped = [], Counter()
    for number, raw in chunk.items:
        text, problem = _decode_record(chunk.kind, raw, text_field)
        if problem is None:
            texts.append(text)
            continue
        if on_bad_record == "skip":
            skipped[problem[0]] += 1
            continue
        where = f"{chunk.origin}:{number}" if chunk.kind in ("jsonl", "txt") else f"{chunk.origin}: row {number}"
        raise UserError(f"{where}: {problem[1]}, {SKIP_HINT}")
    return texts, skipped


def describe_skipped(skipped: Counter) -> str:
    """'3 (2 malformed JSON, 1 empty document)' for a progress summary."""
    total = sum(skipped.values())
    return f"{total} ({', '.join(f'{n} {reason}' for reason, n in sorted(skipped.items()))})" if total else "0"


def iter_texts(inputs: list[str], text_field: str = "text", on_bad_record: str = "error", limit: int | None = None,
               *, c4_dataset: str = "allenai/c4", split: str = "train", skipped: Counter | None = None):
    """Documents (non-empty strings) from files, directories, globs, `datasets` sources and C4 languages.

    ``limit`` caps the input records read (skipped ones included); ``skipped`` (a Counter), when given,
    receives the number of skipped records by reason.
    """
    if on_bad_record not in ("error", "skip"):
        raise ValueError(f"on_bad_record must be 'error' or 'skip', not {on_bad_record!r}")
    sources = resolve_sources(list(inputs), c4_dataset)
    for chunk in iter_chunks(sources, limit=limit, text_field=text_field, split=split):
        texts, bad = decode_chunk(chunk, text_field, on_bad_record)
        if skipped is not None:
            skipped.update(bad)
        yield from texts
