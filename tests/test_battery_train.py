"""Bad inputs and faults of `moderngpt2 train` (and the flags users bring from the earlier tools), each through
the real command line in a subprocess: exit status 2 (130 after Ctrl-C), one line on stderr naming the file or
flag, no traceback, and no checkpoint lost or left half-written."""

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent / "workers"))
from battery import error_line, run_cli, small_tmpfs, snapshot, start_cli, tiny_train_flags  # noqa: E402

from moderngpt2.training.arguments import parse_arguments  # noqa: E402


@pytest.fixture
def flags(battery_assets, tmp_path):
    return tiny_train_flags(battery_assets["tokenizer"], battery_assets["data"], tmp_path / "out", "--max_steps",
                            "2")


def train(*args, **kwargs):
    return run_cli("train", *args, **kwargs)


# ----------------------------------------------------------------------------------------------- the model


def test_an_unknown_preset(flags):
    flags[flags.index("--model_size_name") + 1] = "huge"
    error_line(train(*flags), "huge")


def test_heads_that_do_not_divide_the_width(flags):
    index = flags.index("--config_overrides") + 1
    flags[index] = flags[index].replace("n_head=4", "n_head=5").replace(",head_dim=16", "")
    error_line(train(*flags), "n_head")


# ----------------------------------------------------------------------------------------------- checkpoints


def _copy_run(battery_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(battery_run, out)
    return out


def test_resume_from_a_missing_checkpoint(flags, tmp_path):
    error_line(train(*flags, "--resume_from_checkpoint", tmp_path / "checkpoint-9"), "checkpoint-9")


def test_resume_from_a_half_written_checkpoint(battery_run, flags, tmp_path):
    out = _copy_run(battery_run, tmp_path)
    (out / "checkpoint-2" / "trainer_state.json").unlink()
    before = snapshot(out)
    error_line(train(*flags, "--resume_from_checkpoint", out / "checkpoint-2"), "checkpoint-2", "trainer_state")
    assert snapshot(out) == before


def test_a_truncated_model_safetensors_in_a_checkpoint(battery_run, flags, tmp_path):
    out = _copy_run(battery_run, tmp_path)
    weights = out / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    error_line(train(*flags, "--resume_from_checkpoint", out / "checkpoint-2"), "checkpoint-2", "truncated")
    model_flags = [*flags, "--model_name_or_path", out / "checkpoint-2"]
    error_line(train(*model_flags), "model.safetensors", "damaged")


def test_an_output_dir_that_is_a_file(battery_assets, tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("keep me\n")
    result = train(*tiny_train_flags(battery_assets["tokenizer"], battery_assets["data"], blocker, "--max_steps", 1))
    error_line(result, "--output_dir", "out")
    assert blocker.read_text() == "keep me\n"


def test_a_read_only_output_dir(battery_assets, tmp_path):
    with small_tmpfs(tmp_path / "ro", "1m", read_only=True) as read_only:
        result = train(*tiny_train_flags(battery_assets["tokenizer"], battery_assets["data"], read_only / "out",
                                         "--max_steps", 1))
        error_line(result, "read-only", str(read_only))


def _checkpoint_bytes(battery_run) -> int:
    return sum(path.stat().st_size for path in (battery_run / "checkpoint-2").rglob("*") if path.is_file())


def test_a_full_disk_during_a_checkpoint_save_keeps_the_previous_checkpoint(battery_assets, battery_run, tmp_path):
    """A tmpfs that holds one checkpoint and a half: the second save fails, the first survives whole."""
    size = _checkpoint_bytes(battery_run) * 3 // 2 + 64 * 1024
    with small_tmpfs(tmp_path / "disk", str(size)) as disk:
        out = disk / "out"
        result = train(*tiny_train_flags(battery_assets["tokenizer"], battery_assets["data"], out, "--max_steps", 4,
                                         "--save_strategy", "steps", "--save_steps", 1))
        line = error_line(result, "no space left", str(disk), "checkpoint-1")
        assert "removed the half-written checkpoint-2" in line
        assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
        assert load_file(out / "checkpoint-1" / "model.safetensors")  # whole and loadable
        assert not (out / "final").exists()


def test_a_full_disk_during_the_final_save_leaves_no_final_directory(battery_assets, battery_run, tmp_path):
    size = _checkpoint_bytes(battery_run) // 4
    with small_tmpfs(tmp_path / "disk", str(size)) as disk:
        out = disk / "out"
        result = train(*tiny_train_flags(battery_assets["tokenizer"], battery_assets["data"], out, "--max_steps", 2))
        error_line(result, "no space left", str(disk))
        assert not (out / "final").exists() and not (out / "final.partial").exists()


def _run_until(process, out: Path, pattern: str, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while not any(out.glob(pattern)):
        assert time.monotonic() < deadline and process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.05)


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_an_interrupted_run_resumes_to_the_same_weights(battery_assets, tmp_path, signal_number):
    steps = ["--max_steps", "8", "--save_strategy", "steps", "--save_steps", "2", "--learning_rate", "3e-3"]
    reference = tmp_path / "reference"
    assert train(*tiny_train_flags(battery_assets["tokenizer"], battery_assets["data"], reference,
                                   *steps)).returncode == 0
    out = tmp_path / "out"
    flags = tiny_train_flags(battery_assets["tokenizer"], battery_assets["data"], out, *steps)
    process = start_cli("train", *flags)
    _run_until(process, out, "checkpoint-4/trainer_state.json")
    os.kill(process.pid, signal_number)
    _, stderr = process.communicate(timeout=120)
    if signal_number == signal.SIGINT:
        assert process.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
        assert stderr.strip().splitlines()[-1] == "moderngpt2 train: interrupted"
    else:
        assert process.returncode == -signal.SIGKILL
    assert not (out / "final").exists()
    resumed = train(*flags, "--resume_from_checkpoint", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ours, theirs = (load_file(run / "final" / "model.safetensors") for run in (out, reference))
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-6, msg=name)


def test_a_non_finite_loss_without_a_checkpoint_does_not_advise_resuming(flags):
    result = train(*flags, "--learning_rate", "1e30", "--max_steps", "4")
    line = error_line(result, "not finite", "No checkpoint was saved yet")
    assert "--resume_from_checkpoint" not in line


# ----------------------------------------------------------------------------------------------- flags


def test_a_yaml_config_with_an_unknown_key(flags, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("max_steps: 2\nlearning_rat: 0.001\n")
    error_line(train(*flags, config), "run.yaml", "learning_rat", "did you mean --learning_rate")


def test_a_config_file_anywhere_on_the_line(flags, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("max_steps: 7\nlearning_rate: 0.001\n")
    training = parse_arguments([*map(str, flags[:4]), str(config), *map(str, flags[4:])]).training
    assert (training.max_steps, training.learning_rate) == (2, 0.001)  # the flag wins over the file


def test_a_misspelled_flag_gets_a_suggestion(flags):
    error_line(train(*flags, "--learnig_rate", "1e-3"), "--learnig_rate", "did you mean --learning_rate")


def test_an_abbreviated_flag_is_refused(flags):
    error_line(train(*flags, "--learning_rat", "1e-3"), "--learning_rat", "did you mean --learning_rate")


def _device_can(dtype) -> bool:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        with torch.autocast(device, dtype=dtype):
            torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
    except (RuntimeError, TypeError):
        return False
    return dtype is not torch.bfloat16 or device != "cuda" or torch.cuda.is_bf16_supported()


@pytest.mark.parametrize("flag, dtype", [("--bf16", torch.bfloat16), ("--fp16", torch.float16)])
def test_a_precision_the_device_cannot_compute(flags, flag, dtype):
    if _device_can(dtype):
        pytest.skip(f"this machine's device computes in {dtype}: {flag} is valid here")
    error_line(train(*flags, flag), flag)


def test_deepspeed_with_a_missing_file(flags, tmp_path):
    error_line(train(*flags, "--deepspeed", tmp_path / "ds_missing.json"), "--deepspeed", "ds_missing.json",
               "zero1")
    error_line(train(*flags, "--deepspeed"), "--deepspeed", "--deepspeed_config")


def test_the_earlier_deepspeed_spellings_and_shipped_names(flags):
    """`--deepspeed --deepspeed_config zero1` parses to the shipped ZeRO-1 file, and one process without a
    launcher becomes rank 0 of 1 (in a subprocess: DeepSpeed starts torch.distributed while parsing)."""
    import subprocess

    from train_assets import cli_env

    script = ("import os, sys\nfrom moderngpt2.training.arguments import parse_arguments\n"
              "training = parse_arguments(sys.argv[1:]).training\n"
              "print(training.deepspeed, training.hf_deepspeed_config.config['zero_optimization']['stage'], "
              "os.environ['RANK'], os.environ['WORLD_SIZE'])")
    env = {key: value for key, value in cli_env().items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                          "MASTER_ADDR", "MASTER_PORT")}
    done = subprocess.run([sys.executable, "-c", script, *map(str, flags), "--deepspeed", "--deepspeed_config",
                           "zero1"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    path, stage, rank, world = done.stdout.split()[-4:]
    assert path.endswith(os.path.join("configs", "ds_config_zero1.json")) and (stage, rank, world) == ("1", "0", "1")


def test_tensor_parallel_without_a_launcher(flags):
    error_line(train(*flags, "--tp_size", "2"), "--tp_size 2", "torchrun")


def test_local_rank_before_the_subcommand(flags, tmp_path):
    """DeepSpeed's launcher writes --local_rank=0 first; the run gets past parsing to the tokenizer check."""
    flags[flags.index("--tokenizer_path") + 1] = str(tmp_path / "no_tokenizer")
    result = run_cli("--local_rank=0", "train", *flags)
    error_line(result, "no_tokenizer")


def test_megatron_batch_sizes(flags):
    training = parse_arguments([*map(str, flags), "--micro-batch-size", "2", "--global-batch-size", "8"]).training
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (2, 4)
    error_line(train(*flags, "--micro-batch-size", "4", "--global-batch-size", "6"), "--global-batch-size 6",
               "multiple of 4")


def test_shipped_configs_are_listed_and_copied_out(tmp_path):
    listed = run_cli("configs")
    assert listed.returncode == 0 and "ds_config_zero2.json" in listed.stdout
    assert "train --deepspeed zero2" in listed.stdout
    copied = run_cli("configs", "--copy", tmp_path / "configs")
    assert copied.returncode == 0, copied.stderr
    assert json.loads((tmp_path / "configs" / "ds_config_zero3.json").read_text())["zero_optimization"]["stage"] == 3
    before = snapshot(tmp_path / "configs")
    error_line(run_cli("configs", "--copy", tmp_path / "configs"), "--overwrite")
    assert snapshot(tmp_path / "configs") == before
