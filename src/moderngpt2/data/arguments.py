"""Command-line flags shared by the data commands.

Users arrive with flags from two traditions: Hugging Face scripts spell them ``--block_size`` and Megatron
spells them ``--per-layer-vocab-size``. Every flag is registered under both spellings.
"""

import argparse


def spellings(name: str) -> list[str]:
    """``--flag_name`` -> ``["--flag_name", "--flag-name"]`` (the given spelling first, for --help)."""
    body = name.lstrip("-")
    variants = [name, "--" + body.replace("_", "-"), "--" + body.replace("-", "_")]
    return list(dict.fromkeys(variants))


def add_flag(parser, name: str, **kwargs) -> argparse.Action:
    """``parser.add_argument`` under both spellings of ``name``; the destination is the underscore form."""
    kwargs.setdefault("dest", name.lstrip("-").replace("-", "_"))
    return parser.add_argument(*spellings(name), **kwargs)


def add_tokenizer_flags(parser, required: bool = True) -> None:
    """The three ways to name a tokenizer: a directory (or hub name), or a GPT-2 vocab/merges pair."""
    group = parser.add_argument_group("tokenizer" + ("" if required else " (optional)"))
    add_flag(group, "--tokenizer_path", default=None,
             help="directory written by `moderngpt2 train-tokenizer` (or any Hugging Face tokenizer)")
    add_flag(group, "--vocab-file", default=None, help="GPT-2 style vocab.json (with --merge-file)")
    add_flag(group, "--merge-file", default=None, help="GPT-2 style merges.txt (with --vocab-file)")
    add_flag(group, "--tokenizer-type", choices=("GPT2BPETokenizer",), default=None,
             help="Megatron's name for what --vocab-file/--merge-file give (accepted for Megatron scripts)")


def add_source_flags(parser, limit_flag: str = "--max_input_lines_total") -> None:
    """Where the text comes from and what to do with records that are not text."""
    group = parser.add_argument_group("input text")
    add_flag(group, "--input", nargs="+", default=[],
             help="JSON Lines (.jsonl/.json, optionally .gz), .txt (one document per line), .parquet, "
                  "directories or globs of them, or a `datasets` name/path (NAME[:CONFIG], or datasets:PATH)")
    add_flag(group, "--text_field", default="text", help="field or column that holds the text (default: text)")
    add_flag(group, "--c4_langs", nargs="+", default=None,
             help="also stream the multilingual C4 configs of these languages, interleaved (e.g. en ja ko zh)")
    add_flag(group, "--c4_dataset", default="allenai/c4",
             help="the `datasets` repository (or local copy) that holds C4 (default: allenai/c4)")
    add_flag(group, "--dataset_split", default="train", help="split of `datasets` sources (default: train)")
    add_flag(group, "--on_bad_record", choices=("error", "skip"), default="error",
             help="malformed JSON, empty documents, invalid UTF-8: stop with the file and line (error, default) "
                  "or skip and count them (skip)")
    add_flag(group, limit_flag, type=int, default=None,
             help="stop after this many input records (lines or rows, skipped ones included)")


def source_specs(args) -> list[str]:
    """The inputs named by --input and --c4_langs, as the source strings ``iter_texts`` reads."""
    specs = list(args.input)
    if args.c4_langs:
        specs.append("c4:" + ",".join(args.c4_langs))
    return specs
