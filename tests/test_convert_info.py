"""`moderngpt2 info`: analytic parameter counts equal the model's own, part by part, for every preset."""

import re

import pytest
import torch

from moderngpt2 import ModernGPT2Config, ModernGPT2ForCausalLM, cli
from moderngpt2.configuration_moderngpt2 import MODEL_SIZE_PRESETS
from moderngpt2.parameter_counts import count_parameters

# which part of ParameterCounts each parameter name belongs to
PARTS = [
    ("per_layer_table", re.compile(r"^model\.embed_tokens_per_layer\.")),
    ("per_layer_projection", re.compile(r"^model\.per_layer_projection\.")),
    ("per_layer_gates", re.compile(r"\.per_layer_gate\.")),
    ("embedding", re.compile(r"^(model\.embed_tokens|lm_head)\.weight$")),
    ("attention", re.compile(r"\.self_attn\.[qkvo]_proj\.weight$")),
    ("mlp", re.compile(r"\.mlp\.(gate|up|down)_proj\.weight$")),
    ("norms", re.compile(r"(layernorm\.weight|^model\.norm\.weight)$")),
]


def counts_on_meta_device(config) -> dict:
    """Parameter counts of the real model, built on the meta device (no memory), grouped by module name."""
    with torch.device("meta"):
        model = ModernGPT2ForCausalLM(config)
    counts = dict.fromkeys((part for part, _ in PARTS), 0)
    for name, param in model.named_parameters():  # tied weights are listed once
        part = next((part for part, pattern in PARTS if pattern.search(name)), None)
        assert part is not None, f"parameter {name} belongs to no counted part"
        counts[part] += param.numel()
    return counts


VARIANTS = [dict(use_per_layer_embedding=False), dict(use_per_layer_embedding=True)]
CASES = [(preset, variant) for preset in MODEL_SIZE_PRESETS for variant in VARIANTS] + [
    (preset, dict(use_per_layer_embedding=True, per_layer_combination_method=method))
    for preset in ("tiny", "small")
    for method in ("concat", "gated")
] + [("small", dict(tie_word_embeddings=False, n_inner=2000, head_dim=80, use_per_layer_embedding=True))]


@pytest.mark.parametrize("preset, overrides", CASES, ids=[f"{p}-{sorted(o.items())}" for p, o in CASES])
def test_analytic_counts_equal_the_model(preset, overrides):
    config = ModernGPT2Config(model_size_name=preset, **overrides)
    analytic = count_parameters(config)
    assert {part: getattr(analytic, part) for part, _ in PARTS} == counts_on_meta_device(config)
    assert analytic.total == sum(counts_on_meta_device(config).values())


def test_small_with_per_layer_embeddings_golden_numbers(capsys):
    """Hand-computed: small (12 x 768, 12 q / 4 kv heads of 64, MLP 3072), vocab 32000, PLE d=256, V_p=10000."""
    argv = ["info", "--model_size_name", "small", "--use-per-layer-embedding", "--per-layer-hidden-size", "256",
            "--per-layer-vocab-size", "10000", "--vocab_size", "32000"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    embedding = 32000 * 768
    attention = 12 * (2 * 768 * 768 + 2 * 768 * 256)
    mlp = 12 * 3 * 768 * 3072
    norms = (4 * 12 + 1) * 768
    table, projection, gates = 10000 * 12 * 256, 768 * 12 * 256 + 256, 12 * (2 * 768 * 256 + 768)
    total = embedding + attention + mlp + norms + table + projection + gates
    assert total == 166_230_016
    assert re.search(r"^total\s+166,230,016\s+\(166\.23M\)$", out, re.M)
    assert re.search(rf"^embedding\s+{embedding:,}\s", out, re.M)
    assert re.search(rf"^non-embedding \(incl\. PLE projection, gates\)\s+{total - embedding - table:,}\s", out, re.M)
    ple = table + projection + gates
    assert re.search(rf"^per-layer embeddings \(22\.7% of total\)\s+{ple:,}\s", out, re.M)
    assert round(ple / total, 4) == 0.2274
    for label, value in (("table", table), ("projection", projection), ("gates", gates)):
        assert re.search(rf"^  {label}\s+{value:,}\s", out, re.M)
    assert "per_layer_hidden_size = 256" in out and "n_layer = 12" in out


def test_all_presets_table(capsys):
    assert cli.main(["info", "--all"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "preset" not in line]
    assert [row.split("|")[1].strip() for row in rows] == list(MODEL_SIZE_PRESETS)
    small = rows[list(MODEL_SIZE_PRESETS).index("small")].split("|")
    assert small[6].strip() == "128.42M" and small[8].strip() == "166.23M" and small[9].strip() == "22.7%"


def test_info_reads_checkpoints_and_reports_bad_paths(tmp_path, capsys):
    config = ModernGPT2Config(model_size_name="tiny", vocab_size=100, use_per_layer_embedding=True,
                              per_layer_vocab_size=50, per_layer_hidden_size=8)
    ModernGPT2ForCausalLM(config).save_pretrained(tmp_path / "ckpt")
    assert cli.main(["info", "--model", str(tmp_path / "ckpt")]) == 0
    expected = count_parameters(config).total
    assert expected == sum(p.numel() for p in ModernGPT2ForCausalLM(config).parameters())
    assert re.search(rf"^total\s+{expected:,}\s", capsys.readouterr().out, re.M)

    assert cli.main(["info", "--model", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and len(err.strip().splitlines()) == 1

    assert cli.main(["info", "--model_size_name", "small", "--n_head", "7"]) == 2
    assert "num_key_value_heads" in capsys.readouterr().err


def test_canonical_names_and_aliases_give_the_same_report(capsys):
    """`--size` is an alias of `--model_size_name`; `--config_overrides` sets the same fields as single flags."""
    reports = []
    for argv in (["--model_size_name", "tiny", "--n_layer", "3", "--use_per_layer_embedding"],
                 ["--size", "tiny", "--config_overrides", "n_layer=3,use_per_layer_embedding=true"]):
        assert cli.main(["info", *argv]) == 0
        reports.append(capsys.readouterr().out)
    assert reports[0] == reports[1] and "n_layer = 3" in reports[0] and "per-layer embeddings" in reports[0]

    for argv, message in [([], "give one of --model_size_name, --model or --all"),
                          (["--all", "--size", "tiny"], "not --model_size_name and --all together")]:
        assert cli.main(["info", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_a_gemma2_checkpoint_is_counted_like_transformers_builds_it(tmp_path, capsys):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=24)
    config.save_pretrained(tmp_path)
    with torch.device("meta"):
        expected = sum(p.numel() for p in Gemma2ForCausalLM(config).parameters())
    assert cli.main(["info", "--model", str(tmp_path / "config.json")]) == 0
    assert re.search(rf"^total\s+{expected:,}\s", capsys.readouterr().out, re.M)
