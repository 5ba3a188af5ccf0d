"""The one argument system of every command: typed dataclasses parsed by transformers' `HfArgumentParser`.

A command declares its settings as dataclasses (shared groups below, plus its own) and calls `parse_command`.
What every command gets from that:

- both spellings of every flag (`--block_size` and `--block-size`), plus the old names of a renamed flag as
  silent aliases (`arg(..., aliases=...)`);
- a YAML or JSON file of arguments anywhere on the line (flags win over its values);
- no abbreviations (a typo must not silently pick a flag), and a parse error is one line (a UserError) with a
  "did you mean --learning_rate?" for an unknown flag;
- `--help` that lists each flag once, under its canonical name;
- optional positionals that stand for flags (`convert-gemma2 SRC DST` = `--model SRC --output_dir DST`).
"""

import argparse
import copy
import dataclasses
import difflib
import json
import os
import re
from dataclasses import dataclass

import yaml
from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from .configuration_moderngpt2 import (
    MODEL_SIZE_PRESETS,
    PER_LAYER_COMBINATION_METHODS,
    PER_LAYER_GATE_ACTIVATIONS,
    ModernGPT2Config,
)
from .errors import UserError, first_line

CONFIG_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def spellings(*names: str) -> list[str]:
    """Both spellings of each flag name: `--output_path` -> `--output_path`, `--output-path`."""
    variants = []
    for name in names:
        body = name.lstrip("-")
        variants += ["--" + body, "--" + body.replace("_", "-"), "--" + body.replace("-", "_")]
    return list(dict.fromkeys(variants))


def arg(default=dataclasses.MISSING, help: str = "", aliases=(), **metadata):
    """A dataclass field that is a flag: its default, help, old names (both spellings) and argparse extras.

    A list default is copied per instance. `aliases` are accepted silently and not shown in --help.
    """
    metadata = {"help": help, **metadata}
    if aliases:
        metadata["aliases"] = spellings(*aliases)
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# ----------------------------------------------------------------------------------------------- the parser


def known_flags(parser: argparse.ArgumentParser) -> list[str]:
    return [option for action in parser._actions for option in action.option_strings if option.startswith("--")]


def suggestion(flag: str, parser: argparse.ArgumentParser) -> str:
    """' (did you mean --x?)' for the known flags closest to `flag`, else ''."""
    normalised = {}
    for option in known_flags(parser):  # compare in one spelling: `--learning-rat` finds `--learning_rate`
        normalised.setdefault(option.replace("-", "_"), option)
    close = difflib.get_close_matches(flag.split("=", 1)[0].replace("-", "_"), list(normalised), n=2, cutoff=0.75)
    return f" (did you mean {' or '.join(normalised[c] for c in close)}?)" if close else ""


def unknown_flags_error(words: list[str], parser: argparse.ArgumentParser) -> UserError:
    """The error for words no flag took: the unknown flags among them (their values need no mention)."""
    flags = [word for word in words if word.startswith("-")] or words
    described = "; ".join(f"{flag}{suggestion(flag, parser)}" for flag in flags)
    return UserError(f"unknown argument(s): {described}; see '{parser.prog} --help'")


class CanonicalHelpFormatter(argparse.HelpFormatter):
    """Each flag once, under its first (canonical) name, with its default; other spellings and aliases still work.
    A switch (`--overwrite`, which also takes true/false) is shown bare."""

    def _format_action_invocation(self, action):
        if not action.option_strings:
            return super()._format_action_invocation(action)
        name = action.option_strings[0]
        if action.nargs == 0 or action.type is string_to_bool:
            return name
        return f"{name} {self._format_args(action, self._get_default_metavar_for_optional(action))}"

    def _format_usage(self, usage, actions, groups, prefix):
        shown = []
        for action in actions:
            if action.option_strings[:1] == ["-h"]:
                continue
            if action.type is string_to_bool:  # shown as a bare switch
                action = copy.copy(action)
                action.nargs = 0
            shown.append(action)
        return super()._format_usage(usage, shown, groups, prefix)

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "default" in text or any(default is empty for empty in (None, False, argparse.SUPPRESS)) \
                or default == [] or action.nargs == 0:
            return text
        return f"{text} (default: {default})"


class CommandParser(HfArgumentParser):
    """HfArgumentParser with no abbreviations, one-line errors and canonical-name help."""

    def __init__(self, dataclass_types, prog: str, description: str | None = None):
        super().__init__(dataclass_types, prog=prog, description=description, allow_abbrev=False,
                         formatter_class=CanonicalHelpFormatter)

    def error(self, message):
        match = re.match(r"unrecognized arguments: (.*)", message)
        if match:
            raise unknown_flags_error(match.group(1).split(), self)
        match = re.match(r"the following arguments are required: (.*)", message)
        if match:  # name each missing flag once, by its canonical name, not by all its spellings
            missing = [name.split("/")[0] for name in match.group(1).split(", ")]
            raise UserError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required; "
                            f"see '{self.prog} --help'")
        raise UserError(message)

    def values_taken(self, token: str) -> float:
        """How many of the following words the flag `token` consumes: 0, 1, or any number (a list flag)."""
        if not token.startswith("--") or "=" in token:
            return 0
        action = self._option_string_actions.get(token)
        if action is None or action.nargs in (0, "?"):
            return 0
        return float("inf") if action.nargs in ("+", "*") else 1

    def is_optional_bool(self, token: str) -> bool:
        action = self._option_string_actions.get(token.split("=", 1)[0])
        return action is not None and action.type is string_to_bool and action.nargs == "?"


def is_bool_word(word: str) -> bool:
    try:
        string_to_bool(word)
        return True
    except argparse.ArgumentTypeError:
        return False


def explicit_switches(argv: list[str], parser: CommandParser) -> list[str]:
    """`--overwrite SRC` -> `--overwrite true SRC`: a switch (which may take true/false) never eats a positional."""
    words = []
    for index, token in enumerate(argv):
        words.append(token)
        following = argv[index + 1] if index + 1 < len(argv) else None
        if (parser.is_optional_bool(token) and "=" not in token and following is not None
                and not following.startswith("-") and not is_bool_word(following)):
            words.append("true")
    return words


# ----------------------------------------------------------------------------------------------- files of arguments


def take_config_file(argv: list[str], parser: CommandParser) -> tuple[list[str], str | None]:
    """The arguments without the YAML/JSON file of arguments (anywhere on the line), and that file.

    A word among the values of a flag is a value, not the file: `--input a.jsonl b.json` reads two inputs.
    """
    values_left = 0  # words the last flag may still take: 1 for a one-value flag, unbounded for a list
    for index, token in enumerate(argv):
        if token.startswith("-"):
            values_left = parser.values_taken(token)
        elif values_left:
            values_left -= 1
        elif token.endswith(CONFIG_FILE_SUFFIXES):
            return argv[:index] + argv[index + 1:], token
    return argv, None


def load_config_file(path: str, parser: CommandParser) -> dict:
    """A YAML or JSON file of arguments (flag names as keys, dashes or underscores), checked against the parser."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such config file")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle) if path.endswith(".json") else yaml.safe_load(handle)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise UserError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: {error}".replace("\n", " "))
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of argument names to values")
    destinations = {option.lstrip("-").replace("-", "_"): action.dest
                    for option, action in parser._option_string_actions.items() if option.startswith("--")}
    values, unknown = {}, []
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in destinations:
            values[destinations[name]] = value
        else:
            unknown.append(f"{key}{suggestion('--' + name, parser)}")
    if unknown:
        raise UserError(f"{path}: unknown argument(s) {'; '.join(unknown)}; see '{parser.prog} --help'")
    return values


# ----------------------------------------------------------------------------------------------- parsing


def parse_command(prog: str, dataclass_types, argv: list[str], description: str | None = None,
                  positionals: dict[str, str] | None = None, defaults: dict | None = None,
                  parser: CommandParser | None = None):
    """Parse `argv` into one instance of each dataclass type (in order).

    positionals: {field name: help} for fields that may also be given as positionals, in this order.
    defaults: command-specific defaults of shared fields. A `__post_init__` may raise a UserError.
    """
    parser = parser or build_parser(prog, dataclass_types, description, positionals)
    if defaults:
        parser.set_defaults(**defaults)
    argv, config_file = take_config_file(list(argv), parser)
    if config_file:
        parser.set_defaults(**load_config_file(config_file, parser))  # defaults, so every flag wins
    try:
        *groups, remaining = parser.parse_args_into_dataclasses(
            args=explicit_switches(argv, parser), look_for_args_file=False, return_remaining_strings=True)
    except (ValueError, TypeError) as error:
        raise UserError(first_line(error)) from error
    if remaining:
        raise unknown_flags_error(remaining, parser)
    groups = groups[: len(list(dataclass_types))] if not positionals else fill_positionals(groups, positionals)
    return tuple(groups)


def build_parser(prog: str, dataclass_types, description: str | None = None,
                 positionals: dict[str, str] | None = None) -> CommandParser:
    parser = CommandParser(list(dataclass_types), prog=prog, description=description)
    for name, help_text in (positionals or {}).items():
        parser.add_argument(f"positional_{name}", nargs="?", default=None, metavar=name.upper(), help=help_text)
    return parser


def fill_positionals(groups: list, positionals: dict[str, str]) -> list:
    """Positional values fill, in order, the positional fields no flag has set (`--model A B` sets the output)."""
    *instances, namespace = groups
    values = [value for name in positionals if (value := getattr(namespace, f"positional_{name}", None)) is not None]
    owners = {name: next(instance for instance in instances if hasattr(instance, name)) for name in positionals}
    open_fields = [name for name in positionals if getattr(owners[name], name) is None]
    if len(values) > len(open_fields):
        extra = " ".join(values[len(open_fields):])
        raise UserError(f"unexpected argument(s) {extra}: {', '.join(f'--{n}' for n in positionals)} are already set")
    for name, value in zip(open_fields, values):
        setattr(owners[name], name, value)
    for instance in instances:
        check = getattr(instance, "check_required", None)
        if check is not None:
            check()
    return instances


# ----------------------------------------------------------------------------------------------- shared groups


@dataclass
class TokenizerArguments:
    """The three ways to name a tokenizer: a directory (or hub name), or a GPT-2 vocab/merges pair."""

    _argument_group_name = "tokenizer"

    tokenizer_path: str | None = arg(
        None, "directory written by `moderngpt2 train-tokenizer` (or any Hugging Face tokenizer)")
    vocab_file: str | None = arg(None, "GPT-2 style vocab.json (with --merge_file)")
    merge_file: str | None = arg(None, "GPT-2 style merges.txt (with --vocab_file)")
    tokenizer_type: str | None = arg(
        None, "Megatron's name for what --vocab_file/--merge_file give (accepted for Megatron scripts)",
        choices=("GPT2BPETokenizer",))


@dataclass
class SourceArguments:
    """Where the text comes from and what to do with records that are not text."""

    _argument_group_name = "input text"

    input: list[str] = arg(
        [], "JSON Lines (.jsonl/.json, optionally .gz), .txt (one document per line), .parquet, directories or "
            "globs of them, or a `datasets` name/path (NAME[:CONFIG], or datasets:PATH)")
    text_field: str = arg("text", "field or column that holds the text")
    c4_langs: list[str] | None = arg(
        None, "also stream the multilingual C4 configs of these languages, interleaved (e.g. en ja ko zh)")
    c4_dataset: str = arg("allenai/c4", "the `datasets` repository (or local copy) that holds C4")
    dataset_split: str = arg("train", "split of `datasets` sources")
    on_bad_record: str = arg(
        "error", "malformed JSON, empty documents, invalid UTF-8: stop with the file and line (error) or skip and "
                 "count them (skip)", choices=("error", "skip"))
    max_input_lines_total: int | None = arg(
        None, "stop after this many input records (lines or rows, skipped ones included)",
        aliases=("--max_train_lines",))

    def source_specs(self) -> list[str]:
        """The inputs named by --input and --c4_langs, as the source strings `iter_texts` reads."""
        return list(self.input) + (["c4:" + ",".join(self.c4_langs)] if self.c4_langs else [])


@dataclass
class DeviceArguments:
    """Where a command computes and in which dtype (`auto`: CUDA and bf16 when available)."""

    _argument_group_name = "device"

    device: str = arg("auto", "auto, cpu, cuda or cuda:N")
    dtype: str = arg("auto", "auto, bfloat16, float16 or float32 (bf16, fp16, fp32 are accepted too)",
                     metavar="DTYPE")

    def __post_init__(self):
        from .devices import dtype_name

        if self.dtype != "auto":
            self.dtype = dtype_name(self.dtype)


@dataclass
class ModelShapeArguments:
    """A model shape: a preset, then single fields, then `--config_overrides` (each wins over the one before).

    Every field defaults to None, which means the preset's (or ModernGPT2Config's) value: defaults live in the
    config alone.
    """

    _argument_group_name = "model shape"

    model_size_name: str | None = arg(
        None, "preset shape: " + ", ".join(MODEL_SIZE_PRESETS), aliases=("--size",),
        choices=tuple(MODEL_SIZE_PRESETS))
    vocab_size: int | None = arg(None, "main vocabulary size")
    n_positions: int | None = arg(None, "context length")
    n_layer: int | None = arg(None, "number of layers")
    n_embd: int | None = arg(None, "hidden size")
    n_head: int | None = arg(None, "query heads")
    num_key_value_heads: int | None = arg(None, "key/value heads (GQA)")
    head_dim: int | None = arg(None, "size of one attention head")
    n_inner: int | None = arg(None, "MLP width (default 4 x n_embd)")
    rope_theta: float | None = arg(None, "RoPE base frequency")
    attn_logit_softcapping: float | None = arg(None, "attention logit softcap", aliases=("--attn_softcap",))
    final_logit_softcapping: float | None = arg(None, "final logit softcap", aliases=("--final_softcap",))
    sliding_window: int | None = arg(None, "sliding window of the windowed layers")
    config_overrides: str | None = arg(
        None, "comma-separated config settings applied last, e.g. 'n_layer=2,n_embd=64,n_head=4'")


@dataclass
class PerLayerShapeArguments:
    """The per-layer embedding fields of the model config (None: the config's default)."""

    _argument_group_name = "per-layer embeddings"

    use_per_layer_embedding: bool = arg(False, "enable Gemma3n-style per-layer embeddings", aliases=("--per_layer",))
    per_layer_vocab_size: int | None = arg(None, "rows of the per-layer table")
    per_layer_hidden_size: int | None = arg(None, "per-layer embedding width d")
    per_layer_combination_method: str | None = arg(
        None, "how per-layer inputs join the main embedding", choices=PER_LAYER_COMBINATION_METHODS)
    per_layer_gate_activation: str | None = arg(None, "activation of each layer's gate",
                                                choices=PER_LAYER_GATE_ACTIVATIONS)
    per_layer_projection_dropout: float | None = arg(None, "dropout inside each per-layer gate")


def parse_config_overrides(text: str | None) -> dict:
    """'n_layer=2,n_embd=64' -> {'n_layer': 2, 'n_embd': 64}; names must be ModernGPT2Config arguments."""
    if not text:
        return {}
    known = ModernGPT2Config.argument_names()
    overrides = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--config_overrides: '{item}' is not NAME=VALUE (example: 'n_layer=2,n_embd=64')")
        if key not in known:
            raise UserError(f"--config_overrides: '{key}' is not a ModernGPT2Config setting")
        overrides[key] = _parse_value(value)
    return overrides


def _parse_value(text: str):
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def config_settings(*groups) -> dict:
    """The config settings the user gave in shape/per-layer argument groups: explicit fields, then overrides."""
    known = ModernGPT2Config.argument_names()
    settings = {}
    for group in groups:
        for field in dataclasses.fields(group):
            value = getattr(group, field.name)
            if field.name != "config_overrides" and value is not None and field.name in known:
                settings[field.name] = value
    for group in groups:
        settings.update(parse_config_overrides(getattr(group, "config_overrides", None)))
    return settings


def build_config(base: dict | None = None, **settings) -> ModernGPT2Config:
    """The one builder of a ModernGPT2Config from user input: a base (a checkpoint's fields), then settings;
    an impossible combination is a one-line error."""
    merged = {**(base or {}), **settings}
    try:
        return ModernGPT2Config(**merged)
    except ValueError as error:
        raise UserError(f"model config: {error}") from None
