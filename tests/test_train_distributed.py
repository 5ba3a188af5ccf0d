"""`moderngpt2 train` under two CPU processes (gloo) on every shipped engine, against one-process references.

DDP (started by the PBS script), DeepSpeed ZeRO-1 (started by the SLURM script) and ZeRO-3 with the shipped
configs, FSDP2 (applied by transformers while loading) and tensor parallelism (DeepSpeed AutoTP following the
model's TP plan) all train the tiny per-layer-embedding model for 5 steps. Where the engine keeps the math of one
process (DDP, ZeRO-1, FSDP2: the same global batch of 4; TP: the same batch of 2), the logged losses must match the
one-process run to 1e-5. Every run's final checkpoint must load with `AutoModelForCausalLM`.
"""

import importlib.util
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train_assets import REPO_ROOT, cli_env, log_history, logged, torchrun_command, train_flags

from moderngpt2.cli import main as cli

pytestmark = pytest.mark.slow

PLE = ["--use-per-layer-embedding", "--per-layer-hidden-size", "8"]
STEPS = ["--max_steps", "5", "--learning_rate", "3e-3", "--max_eval_samples", "8"]
CONFIGS = REPO_ROOT / "configs"


def deepspeed_skip_reason() -> str | None:
    if importlib.util.find_spec("deepspeed") is None:
        return "DeepSpeed is not installed (pip install '.[deepspeed]')"
    # On the CPU, DeepSpeed's communication layer JIT-compiles its shared-memory op (deepspeed_shm_comm) once.
    if shutil.which("c++") is None and shutil.which("g++") is None:
        return "DeepSpeed's CPU accelerator JIT-compiles deepspeed_shm_comm at start-up and no C++ compiler is here"
    return None


needs_deepspeed = pytest.mark.skipif(deepspeed_skip_reason() is not None, reason=str(deepspeed_skip_reason()))


@pytest.fixture(scope="module")
def assets(tiny_assets):
    return tiny_assets


@pytest.fixture(scope="module")
def reference(assets, tmp_path_factory):
    """One-process runs: {per-device batch: {step: loss}} for global batches of 4 and 2."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    losses = {}
    for batch in (4, 2):
        out = tmp_path_factory.mktemp(f"single{batch}") / "out"
        flags = train_flags(assets, out, *PLE, *STEPS)
        flags[flags.index("--per_device_train_batch_size") + 1] = str(batch)
        assert cli(["train", *flags]) == 0
        losses[batch] = logged(out, "loss")
    torch.set_num_threads(threads)
    return losses


def run_two_processes(launcher: list[str], assets, out: Path, *extra: str, timeout: int = 400):
    flags = train_flags(assets, out, *PLE, *STEPS, "--per_device_train_batch_size", "2", *extra)
    result = subprocess.run([*launcher, *flags], cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return logged(out, "loss")


def assert_same_losses(got: dict, expected: dict):
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4, 5]
    for step in expected:
        assert abs(got[step] - expected[step]) < 1e-5, (step, got[step], expected[step])


def assert_final_loads(out: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "final")
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_moderngpt2.ModernGPT2ForCausalLM"
    assert model.config.use_per_layer_embedding
    ids = torch.arange(32).reshape(1, 32) % model.config.vocab_size
    loss = model(ids, labels=ids).loss
    assert math.isfinite(loss.item()) and loss.item() < math.log(model.config.vocab_size) + 1
    return model


def assert_trainer_optimizer(out: Path, engine: str):
    """The optimizer the engine steps is the Trainer's AdamW with its betas, eps and weight-decay groups."""
    record = json.loads((out / "optimizer.json").read_text())
    chain = record["optimizer_chain"]
    assert any(engine in name for name in chain), chain
    assert chain[-1] in ("torch.optim.adamw.AdamW", "torch.optim.adam.Adam"), chain
    groups = {g["name"]: g for g in record["param_groups"]}
    assert set(groups) == {"decay", "no_decay", "per_layer_decay", "per_layer_no_decay"}
    for group in groups.values():
        assert group["betas"] == [0.9, 0.95] and group["eps"] == 1e-8 and group["lr"] == 3e-3
    assert groups["decay"]["weight_decay"] == groups["per_layer_decay"]["weight_decay"] == 0.01
    assert groups["no_decay"]["weight_decay"] == groups["per_layer_no_decay"]["weight_decay"] == 0.0
    assert "model.embed_tokens.weight" in groups["no_decay"]["parameters"]
    assert "model.layers.0.self_attn.q_proj.weight" in groups["decay"]["parameters"]


@needs_deepspeed
def test_deepspeed_zero3_trains_saves_and_loads(assets, tmp_path):
    out = tmp_path / "zero3"
    losses = run_two_processes(torchrun_command(2, "train"), assets, out, "--deepspeed",
                               str(CONFIGS / "ds_config_zero3.json"), "--save_strategy", "steps", "--save_steps", "5")
    assert sorted(losses) == [1, 2, 3, 4, 5] and all(math.isfinite(v) for v in losses.values())
    assert losses[5] < losses[1]
    assert_trainer_optimizer(out, "DeepSpeedZeroOptimizer_Stage3")
    tag = (out / "checkpoint-5" / "latest").read_text().strip()
    assert (out / "checkpoint-5" / tag).is_dir()
    model = assert_final_loads(out)
    assert model.model.per_layer_token_map.shape == (model.config.vocab_size,)


def test_fsdp2_matches_one_process_and_the_final_checkpoint_loads(assets, reference, tmp_path):
    out = tmp_path / "fsdp2"
    losses = run_two_processes(torchrun_command(2, "train"), assets, out, "--fsdp_size", "2", "--log-per-layer-stats",
                               "--log-per-layer-gradients", "--per-layer-stats-interval", "5")
    assert_same_losses(losses, reference[4])
    # per-layer statistics of sharded tensors are gathered, not taken from one shard
    for name in ("embedding_norm", "embedding_grad_norm", "gate_grad_norm", "gate_contribution"):
        assert logged(out, f"per_layer/{name}/layer_1")[5] > 0
    final = out / "final"
    assert not list(final.glob("_fsdp*.py")), "FSDP's own sources must not be saved as the model code"
    assert_final_loads(out)


@needs_deepspeed
def test_tensor_parallel_two_ranks_follow_the_tp_plan_and_match_one_process(assets, reference, tmp_path):
    out = tmp_path / "tp2"
    # Both ranks hold half of every planned projection and see the same batch of 2: the math of one process.
    losses = run_two_processes(torchrun_command(2, "train"), assets, out, "--deepspeed",
                               str(CONFIGS / "ds_config_tp2.json"))
    assert_same_losses(losses, reference[2])
    model = assert_final_loads(out)
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (64, 64)  # gathered back to full size


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The engine each multi-node script starts here; both keep the math of one process with a global batch of 4.
SCRIPT_ENGINES = [
    pytest.param("train_multi_node_pbs.sh", "ddp", [], id="pbs-ddp"),
    pytest.param("train_multi_node_slurm.sbatch", "zero1", ["--save_strategy", "steps", "--save_steps", "5"],
                 id="slurm-zero1", marks=needs_deepspeed),
]


@pytest.mark.parametrize("script, engine, extra", SCRIPT_ENGINES)
def test_multi_node_scripts_train_two_processes_like_one(assets, reference, tmp_path, script, engine, extra):
    """The scripts' own torchrun lines, one node of two CPU processes (SLURM's tools stand in as plain shells).

    DDP (PBS) and DeepSpeed ZeRO-1 with the shipped config (SLURM) log the one-process losses; ZeRO-1 steps the
    Trainer's AdamW and saves a DeepSpeed checkpoint.
    """
    out = tmp_path / "out"
    flags = train_flags(assets, out, *PLE, *STEPS, "--per_device_train_batch_size", "2", "--bf16", "false", *extra)
    for own in ("--tokenizer_path", "--pre_tokenized_dataset_path", "--output_dir"):  # the scripts set these
        del flags[flags.index(own):flags.index(own) + 2]
    env = cli_env(WORK=str(assets["data"].parent), OUT=str(out), ENGINE=engine, GPUS_PER_NODE="2",
                  MASTER_PORT=str(free_port()), EXTRA_FLAGS=" ".join(flags),
                  PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if script.endswith(".sh"):  # the per-node branch that pbsdsh starts on each node
        env.update(MODERNGPT2_NODE_RANK="0", NNODES="1", MASTER_ADDR="127.0.0.1", PBS_O_WORKDIR=str(REPO_ROOT))
    else:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "srun").write_text('#!/bin/sh\nwhile [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n')
        (bin_dir / "scontrol").write_text("#!/bin/sh\necho 127.0.0.1\n")
        for tool in bin_dir.iterdir():
            tool.chmod(0o755)
        env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", SLURM_JOB_NODELIST="localhost", SLURM_NNODES="1",
                   SLURM_JOB_ID="1", SLURM_SUBMIT_DIR=str(REPO_ROOT))
    result = subprocess.run(["bash", str(REPO_ROOT / "examples" / script)], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert_same_losses(logged(out, "loss"), reference[4])
    # two processes of batch 2: an epoch is ceil(blocks / 4) steps (one process would take twice as many)
    blocks = json.loads((assets["data"] / "manifest.json").read_text())["splits"]["train"]["blocks"]
    assert [e for e in log_history(out) if "loss" in e][-1]["epoch"] == pytest.approx(5 / math.ceil(blocks / 4))
    assert_final_loads(out)
    if engine == "zero1":
        assert_trainer_optimizer(out, "DeepSpeedZeroOptimizer")
        assert (out / "checkpoint-5" / "latest").is_file()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_transformers_tensor_parallel_on_two_gpus(assets, tmp_path):
    out = tmp_path / "tp_native"
    losses = run_two_processes(torchrun_command(2, "train"), assets, out, "--tp_size", "2")
    assert all(math.isfinite(v) for v in losses.values())
    assert_final_loads(out)
