"""`moderngpt2 train`, `evaluate` and `generate` in one process on a tiny model and tiny real data.

One training run with per-layer embeddings (module fixture) feeds the checks of logging, TensorBoard,
evaluation, the final save, `evaluate` and `generate`; resume and failure handling get their own short runs.
"""

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent / "workers"))
from train_assets import build_assets, log_history, logged, train_flags  # noqa: E402

from moderngpt2.cli import main as cli  # noqa: E402
from moderngpt2.tokenization import load_tokenizer, tokenizer_fingerprint  # noqa: E402

PLE = ["--use-per-layer-embedding", "--per-layer-hidden-size", "8"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    torch.set_num_threads(1)
    return build_assets(tmp_path_factory.mktemp("assets"), per_layer=True)


@pytest.fixture(scope="module")
def trained(assets, tmp_path_factory):
    """6 steps with gated per-layer embeddings, a per-layer vocabulary, evaluation, TensorBoard and statistics."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run") / "out"
    flags = train_flags(assets, out, *PLE, "--per-layer-vocab-file", str(assets["per_layer_vocab"]),
                        "--per-layer-combination-method", "gated", "--per-layer-learning-rate-scale", "2",
                        "--max_steps", "6", "--eval_strategy", "steps", "--eval_steps", "3",
                        "--report_to", "tensorboard", "--peak_tflops", "0.001", "--log-per-layer-stats",
                        "--log-per-layer-gradients", "--per-layer-stats-interval", "2", "--learning_rate", "3e-3")
    assert cli(["train", *flags]) == 0
    return out


def validation_blocks(assets) -> int:
    return json.loads((assets["data"] / "manifest.json").read_text())["splits"]["validation"]["blocks"]


def test_training_logs_loss_eval_perplexity_and_throughput(trained, assets):
    history = log_history(trained)
    losses = logged(trained, "loss")
    assert sorted(losses) == [1, 2, 3, 4, 5, 6] and all(math.isfinite(v) for v in losses.values())
    evals = [entry for entry in history if "eval_loss" in entry]
    assert [entry["step"] for entry in evals] == [3, 6]
    for entry in evals:
        assert entry["eval_perplexity"] == pytest.approx(math.exp(entry["eval_loss"]), rel=1e-9)
    assert evals[1]["eval_loss"] < evals[0]["eval_loss"] < math.log(320)
    train_logs = [entry for entry in history if "loss" in entry]
    for entry in train_logs:
        assert entry["tokens_per_second"] > 0 and entry["grad_norm"] > 0
        # MFU against the given peak (1 GFLOP/s here), with the FLOP count of the whole model
        assert entry["mfu"] > 0
    assert train_logs[1]["learning_rate"] > 0


def test_per_layer_statistics_are_logged_every_interval(trained):
    stats = [entry for entry in log_history(trained) if any(k.startswith("per_layer/") for k in entry)]
    assert [entry["step"] for entry in stats] == [2, 4, 6]
    for entry in stats:
        for layer in (0, 1):
            assert 0.0 < entry[f"per_layer/gated_weight/layer_{layer}"] < 1.0
            for name in ("gate_contribution", "embedding_norm", "embedding_grad_norm", "projection_grad_norm",
                         "gate_grad_norm"):
                assert entry[f"per_layer/{name}/layer_{layer}"] > 0, name
    # the gated mixing weights start at exactly 0.5 and move as they learn
    assert stats[-1]["per_layer/gated_weight/layer_0"] != 0.5


def test_tensorboard_event_files_hold_the_scalars(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = list((trained / "runs").iterdir())
    assert len(runs) == 1
    events = EventAccumulator(str(runs[0]), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_second", "train/mfu",
                "eval/loss", "eval/perplexity", "train/per_layer/gated_weight/layer_1",
                "train/per_layer/gate_contribution/layer_0", "train/per_layer/embedding_norm/layer_1",
                "train/per_layer/embedding_grad_norm/layer_0", "train/per_layer/gate_grad_norm/layer_1"):
        assert tag in tags, tag
    losses = logged(trained, "loss")
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars("train/loss")] == \
        [(step, value) for step, value in sorted(losses.items())]
    assert [e.step for e in events.Scalars("train/per_layer/gated_weight/layer_0")] == [2, 4, 6]


def test_optimizer_record_shows_groups_and_the_per_layer_scale(trained):
    record = json.loads((trained / "optimizer.json").read_text())
    assert record["optimizer_chain"][-1].startswith("torch.optim.")
    groups = {g["name"]: g for g in record["param_groups"]}
    for group in groups.values():
        assert group["betas"] == [0.9, 0.95] and group["eps"] == 1e-8
    assert groups["decay"]["weight_decay"] == groups["per_layer_decay"]["weight_decay"] == 0.01
    assert groups["no_decay"]["weight_decay"] == groups["per_layer_no_decay"]["weight_decay"] == 0.0
    assert groups["per_layer_decay"]["lr"] == pytest.approx(2 * groups["decay"]["lr"])
    assert "model.embed_tokens_per_layer.weight" in groups["per_layer_no_decay"]["parameters"]


def test_the_run_plots_its_loss_curve(trained):
    """OUTPUT/loss_curve.png: a picture with the train curve (C0 blue) drawn on it, not an empty frame."""
    from matplotlib.image import imread

    path = trained / "loss_curve.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(path)[..., :3]
    blue = torch.tensor([0x1F, 0x77, 0xB4]) / 255
    near_blue = ((torch.from_numpy(pixels.copy()) - blue).abs().amax(dim=-1) < 0.05).sum().item()
    assert pixels.shape[:2] == (540, 840) and near_blue > 200, near_blue


def test_final_model_and_tokenizer_load_with_auto_classes(trained, assets):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = trained / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(load_tokenizer(str(assets["tokenizer"])))
    config = json.loads((final / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_moderngpt2.ModernGPT2ForCausalLM"
    assert (final / "modeling_moderngpt2.py").is_file()
    assert model.config.use_per_layer_embedding and model.config.per_layer_combination_method == "gated"
    assert model.config.vocab_size == 320 and model.config.n_positions == 32  # 320 tokens: already a multiple of 64
    vocab = json.loads(assets["per_layer_vocab"].read_text())
    assert model.model.per_layer_token_map.tolist() == vocab["token_map"]
    assert model.config.per_layer_vocab_size == vocab["per_layer_vocab_size"]


def test_final_directory_is_hub_ready(trained, assets):
    """Model card with the run's own numbers, generation ids, use_cache, a bounded portable tokenizer, no pickle."""
    from transformers import AutoTokenizer

    final = trained / "final"
    assert not (final / "training_args.bin").exists() and not list(final.glob("*.bin"))
    config = json.loads((final / "config.json").read_text())
    assert config["use_cache"] is True
    tokenizer = AutoTokenizer.from_pretrained(final)
    generation = json.loads((final / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_token_id is not None
    assert generation["pad_token_id"] == tokenizer.pad_token_id is not None
    assert tokenizer.model_max_length == config["n_positions"] == 32
    tokenizer_config = json.loads((final / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast" and "backend" not in tokenizer_config
    original = load_tokenizer(str(assets["tokenizer"]))
    for role in ("bos_token", "eos_token", "unk_token", "pad_token"):
        assert getattr(tokenizer, role) == getattr(original, role)
        token = getattr(tokenizer, role)
        assert tokenizer(f"a{token}b")["input_ids"] == original(f"a{token}b")["input_ids"]
        assert tokenizer.convert_tokens_to_ids(token) == original.convert_tokens_to_ids(token)

    card = (final / "README.md").read_text()
    last_eval = [entry for entry in log_history(trained) if "eval_loss" in entry][-1]
    assert f"held-out perplexity: {math.exp(last_eval['eval_loss']):.4f} (step 6)" in card
    assert "- tokens seen: 768" in card  # 6 steps x 4 blocks x 32 tokens
    assert "- optimizer steps: 6" in card and str(assets["data"]) in card
    assert "per-layer embeddings" in card and f"{sum(p.numel() for p in _final_model(final).parameters()):,}" in card
    assert "moderngpt2 train --tokenizer_path" in card and "--per-layer-combination-method gated" in card


def _final_model(final):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(final)


def test_evaluate_reports_the_trainers_held_out_perplexity(trained, assets, capsys, tmp_path):
    final_eval = [entry for entry in log_history(trained) if "eval_loss" in entry][-1]
    result = tmp_path / "eval.json"
    assert cli(["evaluate", "--model", str(trained / "final"), "--input", str(assets["data"]), "--device", "cpu",
                "--batch_size", "16", "--output_json", str(result)]) == 0
    numbers = json.loads(result.read_text())
    # Same blocks (the whole validation split), token-weighted: the very number the Trainer logged.
    assert numbers["blocks"] == validation_blocks(assets)
    assert numbers["tokens"] == validation_blocks(assets) * 31
    assert numbers["loss"] == pytest.approx(final_eval["eval_loss"], abs=1e-5)
    assert numbers["perplexity"] == pytest.approx(final_eval["eval_perplexity"], rel=1e-4)
    assert "perplexity" in capsys.readouterr().out


def test_evaluate_on_raw_text(trained, assets, tmp_path):
    text = tmp_path / "heldout.txt"
    text.write_text("The cat sees the moon. A dog likes the garden!\nOur team finds a red ball again.\n")
    result = tmp_path / "eval.json"
    assert cli(["evaluate", "--model", str(trained / "final"), "--input", str(text), "--device", "cpu",
                "--block_size", "8", "--output_json", str(result)]) == 0
    numbers = json.loads(result.read_text())
    tokenizer = load_tokenizer(str(trained / "final"))
    total = sum(len(tokenizer(line)["input_ids"]) + 1 for line in text.read_text().splitlines())
    full, rest = divmod(total, 8)
    assert numbers["blocks"] == full + (rest > 1)
    assert numbers["tokens"] == full * 7 + max(rest - 1, 0)
    assert 1.0 < numbers["perplexity"] < 320


def test_generate_streams_greedy_text(trained, capsys):
    from transformers import AutoModelForCausalLM

    assert cli(["generate", "--model", str(trained / "final"), "--prompt", "The cat", "--max_new_tokens", "12",
                "--temperature", "0", "--device", "cpu"]) == 0
    streamed = capsys.readouterr().out
    tokenizer = load_tokenizer(str(trained / "final"))
    model = AutoModelForCausalLM.from_pretrained(trained / "final")
    ids = tokenizer("The cat", return_tensors="pt")["input_ids"]
    expected = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert streamed.strip() == tokenizer.decode(expected[0], skip_special_tokens=True).strip()
    assert streamed.startswith("The cat")


def test_generate_sampling_is_reproducible_with_a_seed(trained, capsys):
    args = ["generate", "--model", str(trained / "final"), "--prompt", "A dog", "--max_new_tokens", "10",
            "--temperature", "1.2", "--top_k", "20", "--top_p", "0.9", "--seed", "7", "--device", "cpu"]
    assert cli(args) == 0
    first = capsys.readouterr().out
    assert cli(args) == 0
    assert capsys.readouterr().out == first


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "-1"], "--temperature -1.0: must be >= 0"),
    (["--top_p", "1.5"], "--top_p 1.5: must be in (0, 1]"),
    (["--max_new_tokens", "0"], "--max_new_tokens 0: must be at least 1"),
])
def test_generate_bad_settings_are_one_line_errors(trained, capsys, flags, message):
    assert cli(["generate", "--model", str(trained / "final"), "--prompt", "x", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"moderngpt2 generate: error: {message}") and "\n" not in err


def test_resume_is_exact_and_skips_a_checkpoint_killed_while_saving(assets, tmp_path, caplog):
    straight = tmp_path / "straight"
    common = [*PLE, "--per-layer-vocab-file", str(assets["per_layer_vocab"]), "--max_steps", "10",
              "--save_strategy", "steps", "--save_steps", "5", "--learning_rate", "3e-3"]
    assert cli(["train", *train_flags(assets, straight, *common)]) == 0
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-5", resumed / "checkpoint-5")
    # Mark the copied history: a resumed run carries it on, a run started afresh would not.
    state_path = resumed / "checkpoint-5" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state["log_history"][0]["copied_from_checkpoint"] = 1.0
    state_path.write_text(json.dumps(state))
    # A later save that was killed half way: weights cut short, no trainer_state.json yet.
    broken = resumed / "checkpoint-10"
    shutil.copytree(straight / "checkpoint-10", broken)
    (broken / "trainer_state.json").unlink()
    weights = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with caplog.at_level("WARNING"):
        assert cli(["train", *train_flags(assets, resumed, *common, "--resume_from_checkpoint", "last")]) == 0
    assert "skipping incomplete checkpoint" in caplog.text and "checkpoint-10" in caplog.text
    assert logged(resumed, "copied_from_checkpoint") == {1: 1.0}
    expected, got = logged(straight, "loss"), logged(resumed, "loss")
    assert sorted(got) == list(range(1, 11))
    assert [got[s] for s in range(6, 11)] == [expected[s] for s in range(6, 11)]  # bit-identical
    assert [logged(resumed, "grad_norm")[s] for s in range(6, 11)] == \
        [logged(straight, "grad_norm")[s] for s in range(6, 11)]
    final_a, final_b = (load_file(run / "final" / "model.safetensors") for run in (straight, resumed))
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(assets, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli(["train", *train_flags(assets, out, "--max_steps", "8", "--learning_rate", "1e30",
                                      "--warmup_steps", "0", "--save_strategy", "steps", "--save_steps", "1")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("moderngpt2 train: error: the training loss or its gradients are not finite")
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    assert checkpoints and f"Last good checkpoint: {out / checkpoints[-1]}" in err
    assert not (out / "final").exists()
    weights = load_file(out / checkpoints[-1] / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def test_explicit_per_layer_streams_and_a_frozen_table(assets, tmp_path):
    from moderngpt2.training.arguments import parse_arguments
    from moderngpt2.training.data import collate_blocks, load_training_data

    out = tmp_path / "out"
    flags = train_flags(assets, out, *PLE, "--per-layer-data-path", str(assets["per_layer_stream"]),
                        "--per-layer-vocab-size", "48", "--freeze-per-layer-embedding", "--max_steps", "3",
                        "--save_strategy", "steps", "--save_steps", "1", "--learning_rate", "1e-2")
    arguments = parse_arguments(flags)
    data = load_training_data(arguments.data, arguments.per_layer, load_tokenizer(str(assets["tokenizer"])),
                              eval_wanted=False)
    batch = collate_blocks([data.train[0], data.train[1]])
    assert batch["per_layer_input_ids"].shape == batch["input_ids"].shape == (2, 32)
    assert cli(["train", *flags]) == 0
    first, last = (load_file(out / name / "model.safetensors") for name in ("checkpoint-1", "checkpoint-3"))
    table, projection = "model.embed_tokens_per_layer.weight", "model.per_layer_projection.proj.weight"
    assert torch.equal(first[table], last[table]) and not torch.equal(first[projection], last[projection])


@pytest.mark.parametrize("case", ["tokenizer", "block_size", "per_layer_stream", "vocab_without_ple",
                                  "existing_output"])
def test_user_mistakes_are_one_line_errors(assets, tmp_path, capsys, case):
    out = tmp_path / "out"
    flags = train_flags(assets, out, "--max_steps", "1")
    if case == "tokenizer":
        other = tmp_path / "other_tokenizer"
        assert cli(["train-tokenizer", "--input", str(assets["corpus"]), "--output_path", str(other),
                    "--vocab_size", "300", "--no_progress"]) == 0
        flags[flags.index("--tokenizer_path") + 1] = str(other)
        expected = "pretokenized with another tokenizer"
    elif case == "block_size":
        flags += ["--block_size", "64"]
        expected = "holds blocks of 32 tokens, not 64"
    elif case == "per_layer_stream":
        flags += [*PLE, "--per-layer-data-path", str(tmp_path / "no_stream")]
        expected = "Per-layer data file not found"
    elif case == "vocab_without_ple":
        flags += ["--per-layer-vocab-file", str(assets["per_layer_vocab"])]
        expected = "--per-layer-vocab-file needs --use-per-layer-embedding"
    else:
        (out / "checkpoint-3").mkdir(parents=True)
        expected = "already holds checkpoint-3; pass --resume_from_checkpoint last"
    assert cli(["train", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("moderngpt2 train: error: ") and expected in err[-1]
    assert not (out / "final").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_fsdp_through_accelerate_is_refused_on_cpu_processes(assets, tmp_path, capsys):
    assert cli(["train", *train_flags(assets, tmp_path / "out", "--max_steps", "1", "--fsdp")]) == 2
    assert "use --fsdp_size N" in capsys.readouterr().err


def test_a_fresh_config_rounds_the_vocabulary_and_layers_the_flags(assets, tmp_path):
    from moderngpt2.training.arguments import parse_arguments
    from moderngpt2.training.model_setup import build_config

    assert cli(["train-tokenizer", "--input", str(assets["corpus"]), "--output_path", str(tmp_path / "tok"),
                "--vocab_size", "300", "--no_progress"]) == 0
    tokenizer = load_tokenizer(str(tmp_path / "tok"))
    assert len(tokenizer) == 300
    arguments = parse_arguments([
        "--output_dir", str(tmp_path), "--model_size_name", "small", "--n_layer", "3", "--n_embd", "96",
        "--config_overrides", "n_embd=128,n_head=4,num_key_value_heads=2,head_dim=32", *PLE])
    config = build_config(arguments.shape, arguments.per_layer_shape, tokenizer, block_size=64)
    assert config.vocab_size == 320  # 300 rounded up to a multiple of 64
    assert (config.n_layer, config.n_embd, config.n_positions) == (3, 128, 64)  # preset < flags < overrides
    assert config.per_layer_vocab_size == 320  # the default 10000 capped at the main vocabulary
    assert (config.eos_token_id, config.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)


def test_document_mask_reaches_the_model_and_changes_the_loss(assets, tmp_path):
    """`--document_mask`: batches carry the EOS-derived document ids, and the first step's loss differs from the
    same step without them (same seed, same data), so the mask was applied inside the model."""
    from moderngpt2.training.arguments import parse_arguments
    from moderngpt2.training.data import document_ids_from_eos, load_training_data

    tokenizer = load_tokenizer(str(assets["tokenizer"]))
    flags = train_flags(assets, tmp_path / "masked", "--max_steps", "1", "--document_mask")
    arguments = parse_arguments(flags)
    data = load_training_data(arguments.data, arguments.per_layer, tokenizer, eval_wanted=False)
    batch = data.collate([data.train[i] for i in range(4)])
    assert torch.equal(batch["document_ids"], document_ids_from_eos(batch["input_ids"], tokenizer.eos_token_id))
    assert int(batch["document_ids"].max()) >= 1  # the blocks do pack several documents
    assert cli(["train", *flags]) == 0
    assert cli(["train", *train_flags(assets, tmp_path / "plain", "--max_steps", "1")]) == 0
    masked, plain = logged(tmp_path / "masked")[1], logged(tmp_path / "plain")[1]
    assert math.isfinite(masked) and abs(masked - plain) > 1e-4
