"""Per-layer vocabularies: choose one from corpus statistics, write it as JSON,
and optionally write an explicit per-layer id stream aligned with pretokenized data.

The corpus is ``--input`` text (tokenized here) or the train split of ``--pre_tokenized_dataset_path``.
The strategies are defined in ``per_layer_strategies``. The JSON file (``load_per_layer_vocab`` reads it)::

    {"format": "moderngpt2-per-layer-vocab", "version": 1, "strategy": ..., "per_layer_vocab_size": V_p,
     "tokenizer_fingerprint": ..., "main_vocab_size": V, "unk_id": 4,
     "vocab": {token string -> per-layer id}, "token_map": [per-layer id of every main id],
     "coverage": share of corpus tokens with their own per-layer id, "seed": int or null, ...}

With ``--per-layer-output-prefix DIR``, ``write_per_layer_stream`` maps every block of the pretokenized data through the token map and
writes ``DIR/<split>/shard-*.parquet`` (column ``per_layer_input_ids``) or ``DIR/<split>_text_document.bin/.idx``
with exactly the layout of the main data, then ``DIR/manifest.json`` last.
"""

import hashlib
import os
from dataclasses import asdict, dataclass

import numpy as np
from tqdm.auto import tqdm

from ..arguments import SourceArguments, TokenizerArguments, arg
from ..configuration_moderngpt2 import ModernGPT2Config
from ..errors import UserError
from ..fileio import atomic_write, make_directory, write_json
from ..jsonfile import read_json_object
from ..tokenization import tokenizer_fingerprint, tokenizer_from_arguments
from .blocks import iter_shard_blocks, write_shard_groups
from .encode import EncoderSettings, encode_in_order
from .layout import MAIN_COLUMN, MANIFEST, PER_LAYER_COLUMN, PER_LAYER_FORMAT
from .loader import check_tokenizer, read_manifest
from .megatron import index_bytes, open_tokens, token_dtype
from .per_layer_strategies import RESERVED, STRATEGIES, CorpusStats, classify_surfaces, coverage, select
from .sources import iter_chunks, resolve_sources

VOCAB_FORMAT = "moderngpt2-per-layer-vocab"
DEFAULT_SIZE = ModernGPT2Config.field_defaults()["per_layer_vocab_size"]


@dataclass
class PerLayerVocabArguments:
    """How the per-layer vocabulary is chosen and where it (and an aligned id stream) is written."""

    _argument_group_name = "per-layer vocabulary"

    output_file: str = arg(help="where to write per_layer_vocab.json", aliases=("--output", "--per-layer-vocab-file"))
    pre_tokenized_dataset_path: str | None = arg(
        None, "pretokenized data (from `moderngpt2 pretokenize`): the corpus when --input is not given, and the "
              "data that --per-layer-output-prefix is aligned with")
    per_layer_vocab_size: int | None = arg(
        None, f"per-layer vocabulary V_p (default {DEFAULT_SIZE}, at most what the main vocabulary can fill)")
    per_layer_strategy: str = arg("syntax_focus", "how main ids are chosen (see docs/data.md for the definitions)",
                                  choices=STRATEGIES)
    per_layer_output_prefix: str | None = arg(
        None, "also write the aligned per-layer id stream of --pre_tokenized_dataset_path into this directory")
    seed: int = arg(0, "seed of random_subset")
    num_proc: int = arg(1, "tokenizer processes for --input")
    no_progress: bool = arg(False, "no progress bar")


@dataclass
class PerLayerVocab:
    strategy: str
    per_layer_vocab_size: int
    tokenizer_fingerprint: str
    main_vocab_size: int
    unk_id: int
    vocab: dict
    token_map: list
    coverage: float | None = None
    seed: int | None = None
    corpus_documents: int | None = None
    corpus_tokens: int | None = None


def load_per_layer_vocab(path: str) -> PerLayerVocab:
    """Read and check a per-layer vocabulary file; any problem is a one-line error naming the file."""
    if not os.path.exists(path):
        raise UserError(f"per-layer vocabulary file not found: {path} — make one with `moderngpt2 per-layer-vocab`")
    data = read_json_object(path, "per-layer vocabulary file")
    if data.get("format") != VOCAB_FORMAT or data.get("version") != 1:
        raise UserError(f"{path}: not a {VOCAB_FORMAT} version 1 file")
    missing = [name for name in ("strategy", "per_layer_vocab_size", "tokenizer_fingerprint", "main_vocab_size",
                                 "unk_id", "vocab", "token_map") if name not in data]
    if missing:
        raise UserError(f"{path}: missing {', '.join(missing)}")
    size, token_map = data["per_layer_vocab_size"], data["token_map"]
    if len(token_map) != data["main_vocab_size"]:
        raise UserError(f"{path}: token_map has {len(token_map)} entries for a main vocabulary of "
                        f"{data['main_vocab_size']}")
    if not all(isinstance(i, int) and 0 <= i < size for i in token_map) or not 0 <= data["unk_id"] < size:
        raise UserError(f"{path}: token_map or unk_id holds ids outside 0..{size - 1}")
    fields = {name: data.get(name) for name in PerLayerVocab.__dataclass_fields__}
    return PerLayerVocab(**fields)


def save_per_layer_vocab(path: str, vocab: PerLayerVocab) -> None:
    data = {"format": VOCAB_FORMAT, "version": 1, **asdict(vocab)}
    make_directory(os.path.dirname(os.path.abspath(path)), "--output_file")
    write_json(path, data, indent=None, ensure_ascii=False)


# ----------------------------------------------------------------------------------------------- statistics


def token_surfaces(tokenizer) -> list[str]:
    """The text each main id decodes to on its own."""
    ids = [[i] for i in range(len(tokenizer))]
    return tokenizer.backend_tokenizer.decode_batch(ids, skip_special_tokens=False)


def _stats_from_input(source: SourceArguments, num_proc: int, tokenizer, stats: CorpusStats, progress: bool) -> None:
    sources = resolve_sources(source.source_specs(), source.c4_dataset)
    settings = EncoderSettings.for_tokenizer(tokenizer, text_field=source.text_field,
                                             on_bad_record=source.on_bad_record)
    chunks = iter_chunks(sources, None, source.max_input_lines_total, source.text_field, source.dataset_split)
    with tqdm(desc="corpus statistics", unit="B", unit_scale=True, disable=not progress) as bar:
        for encoded in encode_in_order(chunks, settings, num_proc):
            stats.add(encoded.tokens, encoded.lengths)
            bar.update(encoded.raw_bytes)


def _documents_of_stream(groups, eos_id: int):
    """(tokens, lengths) of whole documents from a token stream given in pieces; documents end at EOS."""
    pending = np.zeros(0, dtype=np.int64)
    for piece in groups:
        tokens = np.concatenate([pending, np.asarray(piece, dtype=np.int64).reshape(-1)])
        ends = np.flatnonzero(tokens == eos_id) + 1
        if not ends.size:
            pending = tokens
            continue
        yield tokens[:ends[-1]], np.diff(np.concatenate([[0], ends]))
        pending = tokens[ends[-1]:]
    if pending.size:  # the last document, cut where the final block ended
        yield pending, np.array([pending.size])


def _train_stream(path: str, manifest: dict):
    """The train split's token stream, in pieces, in order."""
    entry = manifest["splits"]["train"]
    if manifest.get("storage") == "megatron":
        _, tokens = open_tokens(os.path.join(path, entry["prefix"]))
        step = 1 << 20
        for start in range(0, tokens.size, step):
            yield np.asarray(tokens[start:start + step])
        return
    for shard in entry["shards"]:
        yield from iter_shard_blocks(os.path.join(path, shard), MAIN_COLUMN, manifest["block_size"])


def _stats_from_pretokenized(path: str, manifest: dict, stats: CorpusStats, progress: bool) -> None:
    total = manifest["splits"]["train"]["tokens"]
    with tqdm(total=total, desc="corpus statistics", unit="tok", unit_scale=True, disable=not progress) as bar:
        for tokens, lengths in _documents_of_stream(_train_stream(path, manifest), manifest["eos_token_id"]):
            stats.add(tokens, lengths)
            bar.update(tokens.size)


# ----------------------------------------------------------------------------------------------- the stream


def write_per_layer_stream(main_path: str, manifest: dict, vocab: PerLayerVocab, out_dir: str,
                           progress: bool = True) -> dict:
    """Map every block of ``main_path`` through the token map into ``out_dir``, with the same layout."""
    table = np.asarray(vocab.token_map, dtype=np.int32)
    block_size = manifest["block_size"]
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(os.path.join(out_dir, MANIFEST)):
        os.remove(os.path.join(out_dir, MANIFEST))  # the old stream stops being valid before any shard changes
    splits = {}
    total = sum(entry["tokens"] for entry in manifest["splits"].values())
    with tqdm(total=total, desc="per-layer stream", unit="tok", unit_scale=True, disable=not progress) as bar:
        for split, entry in manifest["splits"].items():
            if manifest.get("storage") == "megatron":
                _map_megatron(os.path.join(main_path, entry["prefix"]), os.path.join(out_dir, entry["prefix"]),
                              table, token_dtype(vocab.per_layer_vocab_size), bar)
            else:
                os.makedirs(os.path.join(out_dir, split), exist_ok=True)
                for shard in entry["shards"]:
                    groups = iter_shard_blocks(os.path.join(main_path, shard), MAIN_COLUMN, block_size)
                    write_shard_groups(os.path.join(out_dir, shard), _mapped(groups, table, bar), PER_LAYER_COLUMN)
            splits[split] = {key: entry[key] for key in ("documents", "tokens", "blocks", "shards", "prefix")
                             if key in entry}
    stream = {"format": PER_LAYER_FORMAT, "version": 1, "storage": manifest.get("storage", "parquet"),
              "block_size": block_size, "column": PER_LAYER_COLUMN, "main_settings_hash": manifest["settings_hash"],
              "main_tokenizer_fingerprint": manifest["tokenizer_fingerprint"],
              "per_layer_vocab_size": vocab.per_layer_vocab_size, "strategy": vocab.strategy,
              "token_map_sha256": hashlib.sha256(table.astype("<i4").tobytes()).hexdigest(), "splits": splits}
    write_json(os.path.join(out_dir, MANIFEST), stream, sort_keys=True)
    return stream


def _mapped(groups, table, bar):
    for blocks in groups:
        bar.update(blocks.size)
        yield table[blocks]


def _map_megatron(prefix: str, out_prefix: str, table, dtype, bar) -> None:
    index, tokens = open_tokens(prefix)
    step = 1 << 20
    with atomic_write(out_prefix + ".bin", "wb") as f:
        for start in range(0, tokens.size, step):
            piece = np.asarray(tokens[start:start + step])
            f.write(table[piece].astype(np.dtype(dtype).newbyteorder("<")).tobytes())
            bar.update(piece.size)
    with atomic_write(out_prefix + ".idx", "wb") as f:
        f.write(index_bytes(dtype, index.lengths))


# ----------------------------------------------------------------------------------------------- the whole job


def build_per_layer_vocab(source: SourceArguments, args: PerLayerVocabArguments, tokenizer,
                          manifest: dict | None) -> PerLayerVocab:
    """Count the corpus (--input, else the pretokenized train split) and choose by the strategy."""
    identity = args.per_layer_strategy == "identity"
    minimum = 1 if identity else len(RESERVED) + 1
    usable = len(tokenizer) + (0 if identity else len(RESERVED))  # rows past this would never be used
    size = args.per_layer_vocab_size if args.per_layer_vocab_size is not None else min(DEFAULT_SIZE, usable)
    if size < minimum:
        raise UserError(f"--per-layer-vocab-size must be at least {minimum} for {args.per_layer_strategy} "
                        f"(ids 0-4 are reserved), got {size}")
    if size > usable:
        raise UserError(f"--per-layer-vocab-size {size} is above what the tokenizer's {len(tokenizer)} tokens can "
                        f"fill ({usable} with {args.per_layer_strategy}); choose at most {usable}")
    surfaces = token_surfaces(tokenizer)
    classes = classify_surfaces(surfaces)
    stats = CorpusStats(len(tokenizer), classes.sentence_end)
    if source.source_specs():
        _stats_from_input(source, args.num_proc, tokenizer, stats, not args.no_progress)
    else:
        _stats_from_pretokenized(args.pre_tokenized_dataset_path, manifest, stats, not args.no_progress)
    if stats.documents == 0:
        raise UserError("the corpus holds no documents: nothing to count")
    special_ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "all": set(tokenizer.all_special_ids)}
    selection = select(args.per_layer_strategy, stats, classes, size, special_ids, args.seed)
    strings = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    if args.per_layer_strategy == "identity":
        vocab = {strings[i]: int(i) for i in selection.chosen}
    else:
        vocab = {name: i for i, name in enumerate(RESERVED)}
        for offset, main_id in enumerate(selection.chosen):
            vocab.setdefault(strings[main_id], len(RESERVED) + offset)
    return PerLayerVocab(
        strategy=args.per_layer_strategy, per_layer_vocab_size=size,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer), main_vocab_size=len(tokenizer),
        unk_id=selection.unk_id, vocab=vocab, token_map=selection.token_map.tolist(),
        coverage=round(coverage(selection, stats), 6),
        seed=args.seed if args.per_layer_strategy == "random_subset" else None,
        corpus_documents=stats.documents, corpus_tokens=stats.tokens)


def make_per_layer_vocab(tokenizer_arguments: TokenizerArguments, source: SourceArguments,
                         args: PerLayerVocabArguments) -> tuple[PerLayerVocab, dict | None]:
    """Build the vocabulary, write it to --output_file, and write the aligned stream when asked.

    Returns the vocabulary and the stream's manifest (None without --per-layer-output-prefix).
    """
    tokenizer = tokenizer_from_arguments(tokenizer_arguments)
    manifest = None
    if args.pre_tokenized_dataset_path:
        manifest = read_manifest(args.pre_tokenized_dataset_path)
        check_tokenizer(manifest, tokenizer, args.pre_tokenized_dataset_path)
    elif not source.source_specs():
        raise UserError("no corpus — pass --input FILE ... or --pre_tokenized_dataset_path OUT")
    if args.per_layer_output_prefix and manifest is None:
        raise UserError("--per-layer-output-prefix writes ids aligned with pretokenized data: "
                        "also pass --pre_tokenized_dataset_path OUT")
    vocab = build_per_layer_vocab(source, args, tokenizer, manifest)
    save_per_layer_vocab(args.output_file, vocab)
    stream = None
    if args.per_layer_output_prefix:
        stream = write_per_layer_stream(args.pre_tokenized_dataset_path, manifest, vocab,
                                        args.per_layer_output_prefix, not args.no_progress)
    return vocab, stream
