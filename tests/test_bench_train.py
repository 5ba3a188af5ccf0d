"""`moderngpt2 bench train` on the CPU with tiny shapes: the JSON holds what the issue promises, the numbers agree."""

import json
import math

import pytest
import torch

from moderngpt2 import ModernGPT2Config, ModernGPT2ForCausalLM
from moderngpt2.bench.common import build_configs, build_model
from moderngpt2.bench.train import run_one
from moderngpt2.cli import main as cli_main
from moderngpt2.cli import run as cli_run
from moderngpt2.commands.bench_train import parse_settings
from moderngpt2.flops import matmul_parameter_count, model_flops_utilization, training_flops_per_token

TINY = ["--size", "tiny", "--vocab-size", "512", "--device", "cpu"]


def positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_mfu_formula_matches_a_hand_count():
    # tiny: 2 layers, hidden 64, 4 query heads and 2 KV heads of 16, MLP 256, vocab 512 tied.
    # per layer: q 64*64 + k 64*32 + v 64*32 + o 64*64 = 12,288; MLP 3*64*256 = 49,152; 4 norms * 64 = 256
    per_layer = 12_288 + 49_152 + 256
    matmul_params = 2 * per_layer + 64 + 512 * 64  # + final norm + the tied LM head (the table itself is a lookup)
    assert matmul_params == 156_224
    model = ModernGPT2ForCausalLM(ModernGPT2Config(model_size_name="tiny", vocab_size=512))
    assert matmul_parameter_count(model) == matmul_params
    flops = training_flops_per_token(matmul_params, n_layer=2, attention_width=4 * 16, seq_len=128)
    assert flops == 6 * 156_224 + 12 * 2 * 64 * 128 == 1_133_952
    assert model_flops_utilization(1000.0, flops, peak_tflops=1.0) == pytest.approx(1.133952e-3, rel=1e-12)
    assert model_flops_utilization(1000.0, flops, peak_tflops=None) is None


def test_per_layer_tables_are_not_counted_but_their_projections_are():
    config = ModernGPT2Config(model_size_name="tiny", vocab_size=512, use_per_layer_embedding=True,
                              per_layer_hidden_size=8, per_layer_vocab_size=100)
    model = ModernGPT2ForCausalLM(config)
    # projection 64 -> 2*8 and its norm (8), then per layer a gate 64 -> 8, an up 8 -> 64 and a norm (64)
    assert matmul_parameter_count(model) == 156_224 + 64 * 16 + 8 + 2 * (64 * 8 + 8 * 64 + 64)
    # all parameters: the tied table counted once either way, plus the 100 x (2*8) per-layer table (a lookup)
    assert sum(p.numel() for p in model.parameters()) == matmul_parameter_count(model) + 100 * 16


def test_transformers_models_get_exactly_our_shapes():
    args = parse_settings(TINY + ["--batch", "1", "--seq", "16"])
    configs = build_configs(args, max_positions=16)
    ours = build_model(configs.ours, None, args.device).state_dict()
    gemma2 = build_model(configs.gemma2, "eager", args.device).state_dict()
    ours.pop("lm_head.weight", None)
    gemma2.pop("lm_head.weight", None)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in gemma2.items()}
    assert configs.gemma2.attn_logit_softcapping == 50.0 and configs.gemma2.final_logit_softcapping == 30.0
    assert configs.gemma2.query_pre_attn_scalar == configs.ours.query_pre_attn_scalar == 16
    assert set(configs.gemma2.layer_types) == {"full_attention"}
    llama = configs.llama
    assert (llama.hidden_size, llama.intermediate_size, llama.num_hidden_layers, llama.num_attention_heads,
            llama.num_key_value_heads, llama.head_dim) == (64, 256, 2, 4, 2, 16)
    assert llama.tie_word_embeddings


@pytest.mark.slow
def test_train_bench_reports_every_promised_field(tmp_path):
    out = tmp_path / "train.json"
    rc = cli_run(["bench", "train", *TINY, "--batch", "2", "--seq", "32", "--steps", "2", "--warmup", "1", "--per-layer",
                     "--per-layer-hidden-size", "8", "--per-layer-vocab-size", "100", "--peak-tflops", "1.0",
                     "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    env = report["environment"]
    assert env["device"] and env["torch"] == torch.__version__ and env["transformers"] and env["date"]
    assert report["settings"]["batch"] == 2 and report["settings"]["seq"] == 32

    models = report["models"]
    assert set(models) == {"ours", "ours-ple", "gemma2-eager", "gemma2-flex", "llama-sdpa"}
    if not torch.cuda.is_available():
        assert "no backward on the CPU" in models["gemma2-flex"]["skipped"]
    for name in ("ours", "ours-ple", "gemma2-eager", "llama-sdpa"):
        result = models[name]
        for field in ("tokens_per_s", "step_time_s", "mfu", "warmup_s", "flops_per_token", "matmul_parameters",
                      "parameters", "final_loss"):
            assert positive(result[field]), (name, field, result[field])
        assert result["tokens_per_s"] * result["step_time_s"] == pytest.approx(2 * 32)
        assert result["mfu"] == pytest.approx(result["tokens_per_s"] * result["flops_per_token"] / 1e12)
        assert result["final_loss"] < 2 * math.log(512)  # a sane cross-entropy at random init, not garbage
    assert models["ours"]["attn_implementation"] == "eager"  # softcapped attention on the CPU
    assert models["llama-sdpa"]["attn_implementation"] == "sdpa"
    assert models["ours"]["matmul_parameters"] == models["gemma2-eager"]["matmul_parameters"]

    summary = report["summary"]
    speed = {name: result["tokens_per_s"] for name, result in models.items() if "tokens_per_s" in result}
    best = summary["gemma2_best"]
    assert speed[best] == max(speed[name] for name in ("gemma2-eager", "gemma2-flex") if name in speed)
    assert summary["ours_over_gemma2_best"] == pytest.approx(speed["ours"] / speed[best])
    assert summary["ours_over_llama_sdpa"] == pytest.approx(speed["ours"] / speed["llama-sdpa"])
    assert summary["per_layer_overhead"] == pytest.approx(speed["ours"] / speed["ours-ple"] - 1)
    targets = {target["target"]: target for target in summary["targets"]}
    assert targets["ours / gemma2-best tokens/s"]["value"] == summary["ours_over_gemma2_best"]


@pytest.mark.slow
def test_compiled_training_step_has_no_graph_breaks():
    """One graph per step is part of the speed plan; dynamo's eager backend finds breaks without code generation.

    The per-layer variant runs every code path of the plain model plus its own.
    """
    args = parse_settings(TINY + ["--batch", "2", "--seq", "16", "--steps", "1", "--warmup", "1", "--compile",
                              "--compile-backend", "eager", "--per-layer", "--per-layer-hidden-size", "8",
                              "--per-layer-vocab-size", "100"])
    configs = build_configs(args, max_positions=16)
    result = run_one("ours-ple", configs, args)
    assert result["compiled"] and result["graph_breaks"] == 0, result


def test_bad_settings_are_one_line_errors(capsys):
    assert cli_main(["bench", "train", *TINY, "--batch", "0"]) == 2
    assert cli_main(["bench", "train", *TINY, "--models", "ours,gpt5"]) == 2
    assert cli_main(["bench", "train", *TINY, "--ours-attn", "sdpa", "--steps", "1", "--warmup", "0",
                     "--batch", "1", "--seq", "8", "--models", "ours"]) == 2
    assert cli_main(["bench", "nonsense"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("moderngpt2 bench: error:", "moderngpt2 bench train: error:"))]
    assert len(errors) == 4
    assert "--batch" in errors[0] and "gpt5" in errors[1] and "softcapping" in errors[2] and "nonsense" in errors[3]


def test_a_run_stopped_midway_leaves_the_finished_models_in_the_json(tmp_path, monkeypatch):
    """What a time limit leaves: the JSON is rewritten after every model, so the models done before survive."""
    from moderngpt2.bench import train as bench_train

    def stopped(configs, args):
        raise KeyboardInterrupt  # what a time limit's signal looks like to the remaining work

    monkeypatch.setitem(bench_train.BENCHES, "llama-sdpa", stopped)
    out = tmp_path / "train.json"
    with pytest.raises(KeyboardInterrupt):
        cli_run(["bench", "train", *TINY, "--batch", "1", "--seq", "8", "--steps", "1", "--warmup", "1",
                    "--models", "ours,llama-sdpa", "--json", str(out)])
    report = json.loads(out.read_text())
    assert list(report["models"]) == ["ours"] and positive(report["models"]["ours"]["tokens_per_s"])
    assert report["summary"]["ours_over_llama_sdpa"] is None


def test_canonical_names_and_the_old_spellings_give_the_same_settings(tmp_path):
    out = str(tmp_path / "results" / "train.json")
    old = parse_settings(["--size", "tiny", "--vocab-size", "512", "--attn-softcap", "20", "--final_softcap", "10",
                          "--per-layer", "--per-layer-hidden-size", "8", "--dtype", "fp32", "--device", "cpu",
                          "--json", out, "--no-compile", "--ours-attn", "eager", "--peak-tflops", "2"])
    new = parse_settings(["--model_size_name", "tiny", "--vocab_size", "512", "--attn_logit_softcapping", "20",
                          "--final_logit_softcapping", "10", "--use_per_layer_embedding", "--per_layer_hidden_size",
                          "8", "--dtype", "float32", "--device", "cpu", "--output_json", out, "--no_compile",
                          "--ours_attn", "eager", "--peak_tflops", "2"])
    assert vars(old) == vars(new)
    assert new.model == {"model_size_name": "tiny", "vocab_size": 512, "attn_logit_softcapping": 20.0,
                         "final_logit_softcapping": 10.0, "per_layer_hidden_size": 8}
    assert (new.dtype, new.device, new.compile, new.output_json) == ("float32", torch.device("cpu"), False, out)
    assert new.models == ["ours", "gemma2-eager", "gemma2-flex", "llama-sdpa", "ours-ple"]
    assert (tmp_path / "results").is_dir()  # the output's directory is made (and probed) before any measuring


def test_bench_defaults_softcap_switches_and_a_file_of_arguments(tmp_path):
    defaults = parse_settings(["--device", "cpu"])
    assert defaults.model == {"model_size_name": "small", "attn_logit_softcapping": 50.0,
                              "final_logit_softcapping": 30.0}
    assert (defaults.dtype, defaults.compile, defaults.peak_tflops) == ("bfloat16", False, None)
    configs = build_configs(defaults, max_positions=64)
    assert (configs.ours.vocab_size, configs.ours_per_layer.per_layer_vocab_size,
            configs.ours_per_layer.per_layer_hidden_size) == (32000, 10000, 256)  # ModernGPT2Config's own defaults
    assert parse_settings(["--device", "cpu", "--no-softcap"]).model["attn_logit_softcapping"] is None
    off = parse_settings(["--device", "cpu", "--attn_logit_softcapping", "0"]).model
    assert off["attn_logit_softcapping"] is None and off["final_logit_softcapping"] == 30.0
    assert parse_settings(["--device", "cpu", "--compile", "--compile_backend", "eager"]).compile is True
    windowed = build_configs(parse_settings(["--device", "cpu", "--size", "tiny", "--sliding_window", "8"]), 64)
    assert windowed.gemma2.layer_types == windowed.ours.layer_types == ["sliding_attention", "full_attention"]
    assert windowed.gemma2.sliding_window == windowed.ours.sliding_window == 8
    arguments = tmp_path / "bench.yaml"
    arguments.write_text("model_size_name: tiny\ndtype: bf16\nbatch: 2\n")
    from_file = parse_settings([str(arguments), "--device", "cpu", "--batch", "3"])
    assert (from_file.model_size_name, from_file.dtype, from_file.batch) == ("tiny", "bfloat16", 3)
