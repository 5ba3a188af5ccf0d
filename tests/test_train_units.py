"""The pieces of `moderngpt2 train` that need no training run: arguments, optimizer groups, sampler,
checkpoint completeness, the FLOP count, plots."""

import json
import struct

import pytest
import torch

from moderngpt2 import ModernGPT2Config, ModernGPT2ForCausalLM
from moderngpt2.errors import UserError
from moderngpt2.training.arguments import parse_arguments
from moderngpt2.flops import flops_per_token
from moderngpt2.training.callbacks import ThroughputCallback
from moderngpt2.training.checkpoints import checkpoint_problem, last_complete_checkpoint, resolve_resume
from moderngpt2.arguments import parse_config_overrides
from moderngpt2.training.model_setup import has_preset_shape, round_up
from moderngpt2.training.optim import build_parameter_groups, freeze_per_layer_embedding, parameter_group_names
from moderngpt2.training.plots import plot_loss_curves
from moderngpt2.training.trainer import EpochShuffleSampler


def tiny_model(**overrides):
    settings = dict(model_size_name="tiny", vocab_size=128, use_per_layer_embedding=True, per_layer_vocab_size=32,
                    per_layer_hidden_size=8)
    settings.update(overrides)
    return ModernGPT2ForCausalLM(ModernGPT2Config(**settings))


# ----------------------------------------------------------------------------------------------- arguments


def test_defaults_are_the_pretraining_ones(tmp_path):
    arguments = parse_arguments(["--output_dir", str(tmp_path)])
    args = arguments.training
    assert (args.learning_rate, args.lr_scheduler_type.value, args.warmup_steps) == (2.5e-4, "cosine", 0.05)
    assert (args.adam_beta1, args.adam_beta2, args.adam_epsilon) == (0.9, 0.95, 1e-8)
    assert (args.weight_decay, args.max_grad_norm) == (0.01, 1.0)
    assert args.report_to == ["tensorboard"]
    assert args.eval_strategy.value == "steps" and args.prediction_loss_only
    assert arguments.shape.model_size_name == "small" and not arguments.per_layer_shape.use_per_layer_embedding
    assert arguments.model.model is None and arguments.per_layer_shape.per_layer_hidden_size is None


def test_model_is_the_canonical_name_of_the_checkpoint_to_continue_from(tmp_path, capsys):
    canonical = parse_arguments(["--output_dir", str(tmp_path), "--model", "ckpt"])
    for alias in ("--model_name_or_path", "--model-name-or-path"):
        assert parse_arguments(["--output_dir", str(tmp_path), alias, "ckpt"]).model == canonical.model
    assert canonical.model.model == "ckpt"
    old_key = tmp_path / "run.yaml"
    old_key.write_text(f"model_name_or_path: ckpt\noutput_dir: {tmp_path}\n")
    assert parse_arguments([str(old_key)]).model == canonical.model
    with pytest.raises(SystemExit):
        parse_arguments(["--help"])
    shown = capsys.readouterr().out
    assert "--model MODEL" in shown and "--model_name_or_path" not in shown and "--model-name-or-path" not in shown


def test_dashes_and_underscores_are_the_same_flag(tmp_path):
    dashed = parse_arguments(["--output-dir", str(tmp_path), "--use-per-layer-embedding", "--per-layer-hidden-size",
                              "32", "--per-layer-learning-rate-scale", "2.5", "--freeze-per-layer-embedding",
                              "--per-layer-combination-method", "gated", "--learning-rate", "1e-3"])
    underscored = parse_arguments(["--output_dir", str(tmp_path), "--use_per_layer_embedding",
                                   "--per_layer_hidden_size", "32", "--per_layer_learning_rate_scale", "2.5",
                                   "--freeze_per_layer_embedding", "--per_layer_combination_method", "gated",
                                   "--learning_rate", "1e-3"])
    assert dashed.per_layer_shape == underscored.per_layer_shape and dashed.per_layer == underscored.per_layer
    assert dashed.per_layer_shape.per_layer_hidden_size == 32 and dashed.per_layer.per_layer_learning_rate_scale == 2.5
    assert dashed.training.learning_rate == underscored.training.learning_rate == 1e-3


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_a_config_file_gives_the_arguments_and_flags_after_it_win(tmp_path, suffix):
    settings = {"output_dir": str(tmp_path / "out"), "model_size_name": "tiny", "per-layer-hidden-size": 24,
                "use_per_layer_embedding": True, "learning_rate": 1e-3, "max_steps": 7}
    path = tmp_path / f"run.{suffix}"
    path.write_text(json.dumps(settings))  # JSON is valid YAML too
    arguments = parse_arguments([str(path), "--max_steps", "9"])
    assert arguments.shape.model_size_name == "tiny" and arguments.per_layer_shape.per_layer_hidden_size == 24
    assert arguments.per_layer_shape.use_per_layer_embedding and arguments.training.learning_rate == 1e-3
    assert arguments.training.max_steps == 9


def test_config_file_mistakes_are_one_line_errors(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("output_dir: out\nlearning_rat: 0.1\n")
    with pytest.raises(UserError, match=r"run.yaml: unknown argument\(s\) learning_rat"):
        parse_arguments([str(path)])
    with pytest.raises(UserError, match="no such config file"):
        parse_arguments([str(tmp_path / "missing.yaml")])


def test_config_overrides_parse_and_reject_unknown_names():
    assert parse_config_overrides("n_layer=2, n_embd=64,attn_logit_softcapping=50.0,tie_word_embeddings=false,"
                                  "sliding_window=none") == {
        "n_layer": 2, "n_embd": 64, "attn_logit_softcapping": 50.0, "tie_word_embeddings": False,
        "sliding_window": None}
    with pytest.raises(UserError, match="'n_layers' is not a ModernGPT2Config setting"):
        parse_config_overrides("n_layers=2")
    with pytest.raises(UserError, match="is not NAME=VALUE"):
        parse_config_overrides("n_layer")
    assert round_up(257) == 320 and round_up(320) == 320



def test_a_reshaped_preset_is_not_recorded_as_the_preset():
    assert has_preset_shape(ModernGPT2Config(model_size_name="small", n_positions=128))
    assert not has_preset_shape(ModernGPT2Config(model_size_name="small", n_layer=4, n_embd=256, n_head=4))
    assert not has_preset_shape(ModernGPT2Config(model_size_name="tiny", n_inner=96))


# ----------------------------------------------------------------------------------------------- optimizer


def test_weight_decay_goes_to_linear_matrices_only():
    model = tiny_model(per_layer_combination_method="gated")
    groups = parameter_group_names(model)
    decayed = set(groups["decay"]) | set(groups["per_layer_decay"])
    for name, param in model.named_parameters():
        is_linear_weight = any(name == f"{module_name}.weight" for module_name, module in model.named_modules()
                               if isinstance(module, torch.nn.Linear))
        assert (name in decayed) == is_linear_weight, name
    assert "model.embed_tokens.weight" in groups["no_decay"]
    assert "model.embed_tokens_per_layer.weight" in groups["per_layer_no_decay"]
    assert "model.per_layer_projection.gate_logits" in groups["per_layer_no_decay"]
    assert "model.layers.0.per_layer_gate.gate_proj.weight" in groups["per_layer_decay"]
    assert "model.norm.weight" in groups["no_decay"]
    # every trainable parameter is in exactly one group
    listed = [name for names in groups.values() for name in names]
    assert sorted(listed) == sorted(name for name, _ in model.named_parameters())


def test_concat_combination_weights_are_decayed_matrices():
    groups = parameter_group_names(tiny_model(per_layer_combination_method="concat"))
    assert "model.per_layer_projection.combine_weight" in groups["per_layer_decay"]


def test_per_layer_learning_rate_scale_and_freezing():
    model = tiny_model()
    groups = {g["name"]: g for g in build_parameter_groups(model, learning_rate=1e-3, weight_decay=0.1,
                                                           per_layer_learning_rate_scale=4.0)}
    assert [g for g in groups] == ["decay", "no_decay", "per_layer_decay", "per_layer_no_decay"]
    assert (groups["decay"]["lr"], groups["decay"]["weight_decay"]) == (1e-3, 0.1)
    assert (groups["no_decay"]["lr"], groups["no_decay"]["weight_decay"]) == (1e-3, 0.0)
    assert (groups["per_layer_decay"]["lr"], groups["per_layer_decay"]["weight_decay"]) == (4e-3, 0.1)
    assert groups["per_layer_no_decay"]["lr"] == 4e-3
    table = model.model.embed_tokens_per_layer.weight
    assert freeze_per_layer_embedding(model) == table.numel()
    remaining = [p for g in build_parameter_groups(model, 1e-3, 0.1) for p in g["params"]]
    assert all(p is not table for p in remaining) and not table.requires_grad


# ----------------------------------------------------------------------------------------------- data order


def test_epoch_order_is_a_function_of_seed_and_epoch():
    first, again, other_seed = (EpochShuffleSampler(50, seed) for seed in (3, 3, 4))
    epoch0 = list(first)
    assert sorted(epoch0) == list(range(50))
    assert list(again) == epoch0 and list(other_seed) != epoch0
    first.set_epoch(1)
    epoch1 = list(first)
    assert sorted(epoch1) == list(range(50)) and epoch1 != epoch0
    again.set_epoch(1)
    assert list(again) == epoch1


# ----------------------------------------------------------------------------------------------- checkpoints


def write_safetensors(path, tensor_bytes=64, truncate_by=0):
    header = json.dumps({"w": {"dtype": "F32", "shape": [tensor_bytes // 4], "data_offsets": [0, tensor_bytes]}})
    blob = struct.pack("<Q", len(header)) + header.encode() + bytes(tensor_bytes)
    path.write_bytes(blob[: len(blob) - truncate_by])


def make_checkpoint(root, step, state=True, truncate_by=0):
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    write_safetensors(folder / "model.safetensors", truncate_by=truncate_by)
    if state:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return folder


def test_incomplete_checkpoints_are_recognised(tmp_path):
    assert checkpoint_problem(make_checkpoint(tmp_path, 1)) is None
    assert "trainer_state.json" in checkpoint_problem(make_checkpoint(tmp_path, 2, state=False))
    assert "truncated" in checkpoint_problem(make_checkpoint(tmp_path, 3, truncate_by=10))
    half_state = make_checkpoint(tmp_path, 4)
    (half_state / "trainer_state.json").write_text('{"global_step": 4, "log_hist')
    assert "truncated" in checkpoint_problem(half_state)
    deepspeed = make_checkpoint(tmp_path, 5)
    (deepspeed / "model.safetensors").unlink()
    (deepspeed / "latest").write_text("global_step5")
    assert "global_step5" in checkpoint_problem(deepspeed)
    (deepspeed / "global_step5").mkdir()
    assert checkpoint_problem(deepspeed) is None


def test_resume_picks_the_newest_complete_checkpoint(tmp_path):
    make_checkpoint(tmp_path, 5)
    make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 15, truncate_by=3)  # killed while writing the weights
    make_checkpoint(tmp_path, 20, state=False)  # killed before trainer_state.json
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert resolve_resume("last", str(tmp_path)) == str(tmp_path / "checkpoint-10")
    with pytest.raises(UserError, match="already holds checkpoint-20"):
        resolve_resume(None, str(tmp_path))
    with pytest.raises(UserError, match="incomplete checkpoint"):
        resolve_resume(str(tmp_path / "checkpoint-15"), str(tmp_path))
    assert resolve_resume("auto", str(tmp_path / "fresh")) is None
    with pytest.raises(UserError, match="no complete checkpoint"):
        resolve_resume("last", str(tmp_path / "fresh"))


# ----------------------------------------------------------------------------------------------- throughput, plots


def test_flops_per_token_counts_matmuls_and_attention():
    config = ModernGPT2Config(model_size_name="tiny", vocab_size=128)
    # The embedding table is a lookup, but the tied LM head multiplies by it: every parameter counts once.
    matmul = sum(p.numel() for p in ModernGPT2ForCausalLM(config).parameters())
    attention = 12 * config.n_layer * config.n_head * config.head_dim * 64
    assert flops_per_token(config, 64) == 6 * matmul + attention
    ple = ModernGPT2Config(model_size_name="tiny", vocab_size=128, use_per_layer_embedding=True,
                           per_layer_vocab_size=32, per_layer_hidden_size=8)
    table = 32 * ple.n_layer * 8
    ple_params = sum(p.numel() for p in ModernGPT2ForCausalLM(ple).parameters())
    assert flops_per_token(ple, 64) == 6 * (ple_params - table) + attention


def test_throughput_window_counts_step_time_only():
    meter = ThroughputCallback(tokens_per_step=1000, flops_per_token=10.0, peak_flops_all_devices=1e6)
    meter._seconds, meter._steps = 2.0, 4
    metrics = meter.pop_window()
    assert metrics["tokens_per_second"] == pytest.approx(2000.0)
    assert metrics["mfu"] == pytest.approx(2000.0 * 10.0 / 1e6)
    assert meter.pop_window() == {}


def test_loss_curve_plot(tmp_path):
    history = [{"step": s, "loss": 5.0 / s} for s in range(1, 6)] + [{"step": 5, "eval_loss": 1.2}]
    state = tmp_path / "trainer_state.json"
    state.write_text(json.dumps({"log_history": history}))
    for source in (history, state, tmp_path):
        out = plot_loss_curves(source, tmp_path / "curves.png")
        data = open(out, "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        (tmp_path / "curves.png").unlink()
    compared = plot_loss_curves(None, tmp_path / "two.png", runs={"a": history, "b": state})
    assert open(compared, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
