"""The one argument system (`moderngpt2.arguments`): spellings, aliases, files of arguments, positionals, errors,
help, and the config builder every command shares."""

import json
from dataclasses import dataclass

import pytest

from moderngpt2.arguments import (
    DeviceArguments,
    ModelShapeArguments,
    PerLayerShapeArguments,
    arg,
    build_config,
    build_parser,
    config_settings,
    parse_command,
)
from moderngpt2.errors import UserError


@dataclass
class CopyArguments:
    model: str | None = arg(None, "checkpoint to read", aliases=("--model_name_or_path",))
    output_dir: str | None = arg(None, "directory to write", aliases=("--output_path",))
    block_size: int = arg(128, "tokens per block")
    overwrite: bool = arg(False, "replace an existing output")
    names: list[str] = arg([], "names")


GROUPS = [CopyArguments, DeviceArguments]
POSITIONALS = {"model": "SRC", "output_dir": "DST"}


def parse(*argv, groups=GROUPS, **kwargs):
    return parse_command("moderngpt2 copy", groups, list(argv), positionals=POSITIONALS, **kwargs)


@pytest.mark.parametrize("argv", [
    ["--model", "a", "--output_dir", "b"],
    ["--model-name-or-path", "a", "--output-path", "b"],
    ["--model_name_or_path=a", "--output_path=b"],
    ["a", "b"],
    ["--model", "a", "b"],
    ["--output_dir", "b", "a"],
])
def test_every_spelling_and_alias_reaches_the_same_field(argv):
    copy, _ = parse(*argv)
    assert (copy.model, copy.output_dir) == ("a", "b")


def test_a_switch_before_positionals_does_not_eat_them():
    copy, _ = parse("--overwrite", "a", "b")
    assert (copy.overwrite, copy.model, copy.output_dir) == (True, "a", "b")
    copy, _ = parse("--overwrite", "false", "a", "b")
    assert (copy.overwrite, copy.model) == (False, "a")


def test_a_positional_past_the_open_fields_is_refused():
    with pytest.raises(UserError, match="unexpected argument.* c: --model, --output_dir are already set"):
        parse("--model", "a", "--output_dir", "b", "c")


def test_unknown_flags_and_abbreviations_are_one_line_errors_with_a_suggestion():
    with pytest.raises(UserError, match=r"--blok_size \(did you mean --block_size\?\)"):
        parse("--blok_size", "4")
    with pytest.raises(UserError, match="unknown argument"):
        parse("--block", "4")  # no abbreviations
    with pytest.raises(UserError, match="invalid int value"):
        parse("--block_size", "four")


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_file_of_arguments_anywhere_on_the_line_and_flags_win(tmp_path, suffix):
    values = {"block-size": 64, "model_name_or_path": "from-file", "names": ["x", "y"], "dtype": "bf16"}
    path = tmp_path / f"args{suffix}"
    path.write_text(json.dumps(values))  # JSON is YAML too
    copy, device = parse("--block_size", "32", str(path))
    assert (copy.block_size, copy.model, copy.names, device.dtype) == (32, "from-file", ["x", "y"], "bfloat16")
    copy, _ = parse(str(path), "--model", "flag")
    assert copy.model == "flag"


def test_a_bad_file_of_arguments_is_named(tmp_path):
    path = tmp_path / "args.yaml"
    path.write_text("block_sise: 3\n")
    with pytest.raises(UserError, match=r"args.yaml: unknown argument\(s\) block_sise \(did you mean --block_size"):
        parse(str(path))
    path.write_text("[1, 2]\n")
    with pytest.raises(UserError, match="expected a mapping"):
        parse(str(path))
    with pytest.raises(UserError, match="no such config file"):
        parse(str(tmp_path / "missing.json"))


def test_a_yaml_name_after_a_flag_that_takes_a_value_is_that_value():
    copy, _ = parse("--model", "run.yaml")
    assert copy.model == "run.yaml"


@pytest.mark.parametrize("given, canonical", [("bf16", "bfloat16"), ("FP16", "float16"), ("float32", "float32"),
                                              ("auto", "auto")])
def test_dtype_spellings_mean_the_long_names(given, canonical):
    _, device = parse("--dtype", given)
    assert device.dtype == canonical


def test_an_unknown_dtype_names_the_choices():
    with pytest.raises(UserError, match="--dtype int8: choose one of bfloat16, float16, float32"):
        parse("--dtype", "int8")


def test_command_specific_defaults():
    copy, device = parse(defaults={"block_size": 7, "dtype": "bfloat16"})
    assert (copy.block_size, device.dtype) == (7, "bfloat16")


def test_help_lists_each_flag_once_under_its_canonical_name_with_its_default():
    text = build_parser("moderngpt2 copy", GROUPS, "copy a model", POSITIONALS).format_help()
    assert "--model MODEL" in text and "--model_name_or_path" not in text and "--model-name" not in text
    assert "--block_size BLOCK_SIZE" in text and "(default: 128)" in text
    assert "--overwrite " in text and "[OVERWRITE]" not in text
    assert "SRC" in text and "DST" in text


def shape(*argv):
    return parse_command("moderngpt2 shape", [ModelShapeArguments, PerLayerShapeArguments], list(argv))


def test_config_settings_take_the_preset_then_fields_then_overrides():
    groups = shape("--size", "tiny", "--n_layer", "3", "--config_overrides", "n_layer=4,rope_theta=500.5",
                   "--use_per_layer_embedding", "--per_layer_hidden_size", "8")
    settings = config_settings(*groups)
    assert settings == {"model_size_name": "tiny", "n_layer": 4, "rope_theta": 500.5,
                        "use_per_layer_embedding": True, "per_layer_hidden_size": 8}
    config = build_config({"vocab_size": 320}, **settings)
    assert (config.n_layer, config.n_embd, config.vocab_size, config.per_layer_hidden_size) == (4, 64, 320, 8)


def test_config_mistakes_are_one_line_errors():
    with pytest.raises(UserError, match="'n_layers' is not a ModernGPT2Config setting"):
        config_settings(*shape("--config_overrides", "n_layers=2"))
    with pytest.raises(UserError, match="is not NAME=VALUE"):
        config_settings(*shape("--config_overrides", "n_layer"))
    with pytest.raises(UserError, match="model config: n_head=4 is not divisible by num_key_value_heads=3"):
        build_config(**config_settings(*shape("--size", "tiny", "--num_key_value_heads", "3")))
    with pytest.raises(UserError, match="invalid choice"):
        shape("--size", "huge")
