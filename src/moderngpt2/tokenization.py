"""Tokenizers: train one (byte-level BPE or unigram), load one, and fingerprint it.

``train_tokenizer`` + ``save_tokenizer`` write a directory that ``AutoTokenizer.from_pretrained`` loads. Both kinds
round-trip any text exactly (``decode(encode(x)) == x``): byte-level BPE by construction, unigram through
SentencePiece-style byte fallback (the 256 byte pieces ``<0x00>`` ... ``<0xFF>`` are part of the vocabulary),
and neither normalises the text. The special tokens come first, so their ids are the smallest ones and
always below the vocabulary size the model uses.

A GPT-2 style ``vocab.json`` + ``merges.txt`` pair is accepted wherever a tokenizer is (``load_tokenizer``).
``tokenizer_fingerprint`` identifies a tokenizer by what decides its ids, so pretokenized data can be
checked against the tokenizer a run uses.
"""

import difflib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from .arguments import TokenizerArguments, arg
from .errors import UserError, first_line
from .fileio import make_directory

GPT2_EOS = "<|endoftext|>"
BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]
METASPACE = "\u2581"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


# ----------------------------------------------------------------------------------------------- loading


def _local_mistake(path: str) -> str | None:
    """Why a missing ``path`` is a local folder and not a hub name (so no hub request is made), else None.

    A hub name is ``name`` or ``owner/name``. A path written as one (``/``, ``./``, ``~``, two slashes, a
    backslash), ``owner/name`` where ``owner`` is a local directory, and a near-miss of a local folder's name
    are local, and fail at once instead of after the hub's retries.
    """
    if path.startswith(("/", "./", "../", "~")) or path.count("/") > 1 or "\\" in path:
        return "no such directory"
    parent, name = os.path.split(path)
    if parent and os.path.isdir(parent):
        return f"{parent} is a local directory without {name}"
    folders = [entry for entry in os.listdir(parent or ".") if os.path.isdir(os.path.join(parent or ".", entry))]
    close = difflib.get_close_matches(name, folders, n=1, cutoff=0.8)
    return f"no such directory (did you mean {os.path.join(parent, close[0])}?)" if close else None


def _from_vocab_and_merges(vocab_file: str, merge_file: str):
    from transformers import PreTrainedTokenizerFast

    for flag, path in (("--vocab-file", vocab_file), ("--merge-file", merge_file)):
        if not os.path.isfile(path):
            raise UserError(f"{flag} not found: {path}")
    try:
        with open(vocab_file, encoding="utf-8") as f:
            vocab = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{vocab_file}: not a JSON vocabulary ({error}) — expected GPT-2's vocab.json") from None
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise UserError(f"{vocab_file}: expected a JSON object mapping token -> id, like GPT-2's vocab.json")
    if GPT2_EOS not in vocab:
        raise UserError(f"{vocab_file}: no '{GPT2_EOS}' token — GPT-2 style data needs it between documents")
    try:
        model = models.BPE.from_file(vocab_file, merge_file)
    except Exception as error:  # the Rust loader reports bad merges with its own exception type
        raise UserError(f"{merge_file}: not a GPT-2 merges file ({error})") from None
    backend = Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.add_special_tokens([GPT2_EOS])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=GPT2_EOS, eos_token=GPT2_EOS,
                                   unk_token=GPT2_EOS, pad_token=GPT2_EOS, clean_up_tokenization_spaces=False)


def load_tokenizer(tokenizer_path=None, vocab_file=None, merge_file=None):
    """A fast (Rust-backed) Hugging Face tokenizer from a directory or hub name, or a vocab/merges pair."""
    if tokenizer_path and (vocab_file or merge_file):
        raise UserError("give either --tokenizer_path or --vocab-file/--merge-file, not both")
    if vocab_file or merge_file:
        if not (vocab_file and merge_file):
            raise UserError("--vocab-file and --merge-file go together: give both")
        return _from_vocab_and_merges(vocab_file, merge_file)
    if not tokenizer_path:
        raise UserError("no tokenizer given — pass --tokenizer_path DIR (from `moderngpt2 train-tokenizer`) "
                        "or --vocab-file vocab.json --merge-file merges.txt")
    path = os.path.expanduser(tokenizer_path)
    mistake = None if os.path.exists(path) else _local_mistake(path)
    if mistake:
        raise UserError(f"Tokenizer not found: {tokenizer_path}: {mistake} — train one with `moderngpt2 "
                        "train-tokenizer` or pass --vocab-file/--merge-file")
    if os.path.isdir(path) and not any(os.path.exists(os.path.join(path, name)) for name in TOKENIZER_FILES):
        raise UserError(f"{tokenizer_path}: no tokenizer files in it (none of {', '.join(TOKENIZER_FILES)}) — "
                        "give the directory `moderngpt2 train-tokenizer` wrote")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as error:  # OSError, ValueError, EnvironmentError from the hub or a broken directory
        if not os.path.exists(path):
            raise UserError(f"Tokenizer not found: {tokenizer_path} — no such directory, and not loadable as a "
                            f"hub name ({first_line(error)})") from None
        raise UserError(f"cannot load the tokenizer {tokenizer_path}: {first_line(error)}") from None
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise UserError(f"{tokenizer_path}: not a fast (Rust) tokenizer — save it with tokenizer.json")
    return tokenizer


def tokenizer_from_arguments(arguments: TokenizerArguments):
    """The tokenizer named by a command's tokenizer flags."""
    if arguments.tokenizer_type and not (arguments.vocab_file and arguments.merge_file):
        raise UserError(f"--tokenizer-type {arguments.tokenizer_type} reads --vocab-file and --merge-file: give both")
    return load_tokenizer(arguments.tokenizer_path, arguments.vocab_file, arguments.merge_file)


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable hash of what decides token ids: vocabulary, merges, added tokens, pre-tokenizer, specials."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    essentials = {
        "model": backend.get("model"),
        "added_tokens": [(t["id"], t["content"], t["special"]) for t in backend.get("added_tokens") or []],
        "normalizer": backend.get("normalizer"),
        "pre_tokenizer": backend.get("pre_tokenizer"),
        "specials": {role: getattr(tokenizer, role, None) for role in ("bos_token", "eos_token", "unk_token",
                                                                        "pad_token")},
    }
    # the Rust serialisation orders everything (vocabulary by id, merges by rank): no key sorting needed
    canonical = json.dumps(essentials, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- training


def special_tokens_in_order(special_tokens, bos, eos, unk, pad) -> list[str]:
    """The user's special tokens in their order, then any role token they left out; no duplicates."""
    return list(dict.fromkeys([*(special_tokens or []), eos, bos, unk, pad]))


def _bpe_backend(vocab_size, specials, min_frequency, progress):
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=progress)
    return backend, trainer


def _unigram_backend(vocab_size, specials, unk, progress):
    backend = Tokenizer(models.Unigram())
    # "never": no piece is prepended, so a text's first character survives the round trip unchanged
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="never")
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Metaspace(replacement=METASPACE, prepend_scheme="never")])
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size - len(BYTE_PIECES), special_tokens=specials,
                                      unk_token=unk, show_progress=progress)
    return backend, trainer


def _with_byte_fallback(backend, unk):
    """Append the 256 byte pieces to a trained unigram model so that no character is ever unknown."""
    model = json.loads(backend.to_str())["model"]
    pieces = [(piece, score) for piece, score in model["vocab"]]
    known = {piece for piece, _ in pieces}
    lowest = min(score for _, score in pieces)
    pieces += [(piece, lowest - 1.0) for piece in BYTE_PIECES if piece not in known]
    unk_id = next(i for i, (piece, _) in enumerate(pieces) if piece == unk)
    backend.model = models.Unigram(pieces, unk_id, byte_fallback=True)
    return backend


def train_tokenizer(texts, model_type="bpe", vocab_size=32000, special_tokens=None, bos_token=GPT2_EOS,
                    eos_token=GPT2_EOS, unk_token="<unk>", pad_token="<pad>", min_frequency=2, progress=True):
    """Train a tokenizer on an iterable of strings and wrap it as a ``PreTrainedTokenizerFast``."""
    from transformers import PreTrainedTokenizerFast

    specials = special_tokens_in_order(special_tokens, bos_token, eos_token, unk_token, pad_token)
    floor = len(specials) + 256
    if vocab_size < floor:
        raise UserError(f"--vocab_size {vocab_size} is too small: {len(specials)} special tokens and 256 bytes "
                        f"need at least {floor}")
    if model_type == "bpe":
        backend, trainer = _bpe_backend(vocab_size, specials, min_frequency, progress)
    elif model_type == "unigram":
        backend, trainer = _unigram_backend(vocab_size, specials, unk_token, progress)
    else:
        raise UserError(f"--model_type must be bpe or unigram, not {model_type!r}")
    seen = {"characters": 0}

    def counted(stream):
        for text in stream:
            seen["characters"] += len(text.strip())
            yield text

    backend.train_from_iterator(counted(texts), trainer=trainer)
    if seen["characters"] == 0 or backend.get_vocab_size() <= len(specials):
        raise UserError("the input holds no text: nothing to train a tokenizer on — check --input and --text_field")
    if model_type == "unigram":
        backend = _with_byte_fallback(backend, unk_token)
    extra = [t for t in specials if t not in (bos_token, eos_token, unk_token, pad_token)]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos_token, eos_token=eos_token,
                                        unk_token=unk_token, pad_token=pad_token,
                                        additional_special_tokens=extra or None, clean_up_tokenization_spaces=False)
    special_ids = tokenizer.convert_tokens_to_ids(specials)
    assert max(special_ids) < len(tokenizer) <= vocab_size, (special_ids, len(tokenizer), vocab_size)
    return tokenizer


@dataclass
class TokenizerTrainingArguments:
    """What `train-tokenizer` makes and where it goes (the text comes from SourceArguments)."""

    _argument_group_name = "tokenizer training"

    output_dir: str = arg(help="directory to write the tokenizer into", aliases=("--output_path",))
    vocab_size: int = arg(32000, "vocabulary size, specials included")
    model_type: str = arg("bpe", "bpe: byte-level BPE like GPT-2; unigram: SentencePiece-style with byte fallback",
                          choices=("bpe", "unigram"))
    special_tokens: list[str] = arg([GPT2_EOS, "<unk>", "<pad>"], "special tokens, given the smallest ids in this order")
    bos_token: str = arg(GPT2_EOS, "beginning-of-sequence token")
    eos_token: str = arg(GPT2_EOS, "end-of-document token")
    unk_token: str = arg("<unk>", "unknown token")
    pad_token: str = arg("<pad>", "padding token")
    min_frequency: int = arg(2, "BPE: minimum count of a merged pair")
    overwrite: bool = arg(False, "replace a tokenizer already in --output_dir")
    no_progress: bool = arg(False, "no progress bar")


def check_output_dir(output_dir: str, overwrite: bool) -> None:
    """Refuse to replace a tokenizer silently: data and models made with it would no longer match it."""
    if os.path.isfile(os.path.join(output_dir, "tokenizer.json")) and not overwrite:
        raise UserError(f"{output_dir} already holds a tokenizer; data and models made with it need it as it is — "
                        "choose another --output_dir, or pass --overwrite to replace it")
    make_directory(output_dir, "--output_dir")


def save_tokenizer(tokenizer, output_dir: str) -> None:
    """Write the tokenizer files into a fresh folder first, then move them in: never a half-written directory."""
    make_directory(output_dir, "--output_dir")
    staging = tempfile.mkdtemp(prefix=".tokenizer-", dir=output_dir)
    try:
        tokenizer.save_pretrained(staging)
        for name in os.listdir(staging):
            os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def train_and_save_tokenizer(texts, arguments: TokenizerTrainingArguments):
    """Train a tokenizer on `texts` (an iterable, read only after --output_dir is checked) and save it there."""
    check_output_dir(arguments.output_dir, arguments.overwrite)
    tokenizer = train_tokenizer(texts, arguments.model_type, arguments.vocab_size, arguments.special_tokens,
                                arguments.bos_token, arguments.eos_token, arguments.unk_token, arguments.pad_token,
                                arguments.min_frequency, progress=not arguments.no_progress)
    save_tokenizer(tokenizer, arguments.output_dir)
    return tokenizer
