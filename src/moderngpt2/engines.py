"""What the distributed engines and their launchers need from us, each workaround in one place.

Needed with torch 2.13, transformers 5.17-5.24, accelerate 1.3-1.16 and DeepSpeed 0.19. Each function says which
engine needs it and why, so it can go when that engine no longer does. Everything here is a no-op (or the
identity) for a plain single-process run.
"""

import atexit
import json
import os
import shutil
import logging
import socket
import sys
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:  # torch is imported by the functions that need it: `moderngpt2 --help` stays fast
    import torch

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------- launchers

LOCAL_RANK_FLAGS = ("--local_rank", "--local-rank")
RENDEZVOUS_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def take_local_rank(argv: list[str]) -> list[str]:
    """`argv` without `--local_rank N` / `--local_rank=N`.

    DeepSpeed's launcher (`deepspeed $(which moderngpt2) train ...`) and torch.distributed.launch write the flag
    as the first argument, before the subcommand. Both also set LOCAL_RANK, which is what the Trainer reads, so
    the flag is dropped wherever it stands.
    """
    remaining, index = [], 0
    while index < len(argv):
        name, equals, _ = argv[index].partition("=")
        if name in LOCAL_RANK_FLAGS:
            index += 1 if equals else 2
            continue
        remaining.append(argv[index])
        index += 1
    return remaining


def launched() -> bool:
    """Whether a launcher (torchrun, accelerate, deepspeed, a scheduler wrapper) set up the ranks."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def set_single_process_environment() -> None:
    """Make a process started without a launcher rank 0 of a world of 1.

    DeepSpeed (0.19) without the rendezvous variables looks for MPI to discover its rank, and fails without
    mpi4py; one process is rank 0 of 1, so say so.
    """
    if launched():
        return
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(_free_port())}
    for name, value in defaults.items():
        os.environ.setdefault(name, value)


def cpu_training_defaults() -> dict:
    """`use_cpu` on a machine without an accelerator (CUDA, MPS, XPU), as a default of the training arguments.

    Without it transformers' Trainer (5.x) treats CPU processes under torchrun as unrelated single processes
    instead of ranks of one gloo process group.
    """
    import torch

    xpu = getattr(torch, "xpu", None)
    accelerated = torch.cuda.is_available() or torch.backends.mps.is_available() or bool(xpu and xpu.is_available())
    return {} if accelerated else {"use_cpu": True}


# ----------------------------------------------------------------------------------------------- process groups


def ensure_deepspeed_comm(training_args) -> None:
    """Give DeepSpeed its communication layer on the process group the Trainer already started.

    On GPUs transformers' Trainer (5.x) does this itself; for CPU processes (gloo) it does not, and ZeRO-3's
    partitioned model construction would then believe it runs alone.
    """
    if not training_args.deepspeed or training_args.world_size < 2:
        return
    import deepspeed

    if not deepspeed.comm.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo" if training_args.use_cpu else None)


def release_process_group() -> None:
    """Wait for every rank, then tear torch.distributed down: no rank leaves while another still needs it.

    Only called after success: after an error another rank may be inside a collective and the barrier would
    hang. The process itself then ends through `exit_process`.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int) -> None:
    """End the process with `code`; a rank of a distributed run (WORLD_SIZE > 1) leaves with os._exit.

    torch (2.x) keeps C++ references to a gloo process group once DDP or DeepSpeed has used it, so
    destroy_process_group cannot stop its threads; tearing them down among the interpreter's finalizers
    occasionally aborted a finished rank with SIGABRT ("terminate called without an active exception").
    Python's exit handlers still run first: logging, TensorBoard and experiment trackers flush and close there.
    """
    if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1"):
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def check_engine_settings(training_args, sharded_while_loading: bool) -> None:
    """Refuse or adjust the engine settings that cannot work as given, before anything is loaded.

    - accelerate's (1.x) FSDP plugin (`--fsdp`) shards GPU processes only; CPU processes shard through
      transformers' FSDP2 while loading (`--fsdp_size`).
    - transformers (5.x) cannot checkpoint the optimizer of a model it sharded while loading (`--tp_size`,
      `--fsdp_size`), so such checkpoints hold the model only.
    """
    if training_args.fsdp and training_args.use_cpu:
        raise UserError("--fsdp runs through accelerate, which shards GPU processes only; for CPU processes "
                        "use --fsdp_size N (FSDP2 applied by transformers while loading)")
    if sharded_while_loading and not training_args.save_only_model:
        logger.warning("--tp_size/--fsdp_size: checkpoints hold the model only (resuming them is not supported)")
        training_args.save_only_model = True


# ----------------------------------------------------------------------------------------------- sharded tensors


def full_tensor(tensor: "torch.Tensor") -> "torch.Tensor":
    """The whole tensor of an FSDP2- or tensor-parallel-sharded DTensor (a collective: every rank calls it),
    else the tensor itself."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def local_tensor(tensor: "torch.Tensor") -> "torch.Tensor":
    """This rank's shard of a DTensor (FSDP2, tensor parallel), else the tensor itself: torch's norm helpers
    cannot mix DTensors with plain tensors."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def is_zero_partitioned(param: "torch.Tensor") -> bool:
    """Whether DeepSpeed ZeRO-3 replaced this parameter's data by a flat shard (its real shape is `ds_shape`)."""
    return hasattr(param, "ds_shape")


def logical_shape(param: "torch.Tensor") -> "torch.Size":
    """The shape of a parameter as the model defines it, also when ZeRO-3 has partitioned it."""
    return getattr(param, "ds_shape", param.shape)


def logical_numel(param: "torch.Tensor") -> int:
    """The element count of a parameter as the model defines it, also when ZeRO-3 has partitioned it."""
    return getattr(param, "ds_numel", param.numel())


# ----------------------------------------------------------------------------------------------- loading and saving


def load_fresh_sharded(make_model, load_kwargs: dict, distributed_config, output_dir: str):
    """A fresh model placed by transformers' tensor-parallel plan and FSDP2 (`distributed_config`).

    transformers (5.x) shards a model only inside `from_pretrained`, so rank 0 writes the seeded fresh model
    (`make_model()`) to OUTPUT/.initial-model for every rank to load, and removes it once all have.
    """
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    directory = os.path.join(output_dir, ".initial-model")
    if dist.get_rank() == 0:
        make_model().save_pretrained(directory)
    dist.barrier()
    model = AutoModelForCausalLM.from_pretrained(directory, distributed_config=distributed_config, **load_kwargs)
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(directory, ignore_errors=True)
    return model


def complete_state_dict(model, state_dict: dict) -> dict:
    """Add the persistent buffers (the per-layer token map) that an engine's gathered weights left out.

    DeepSpeed's (0.19) tensor-parallel gather returns parameters only; buffers are replicated on every rank, so
    the local copy is the true one.
    """
    buffers = {}
    for module_name, module in model.named_modules():
        for name, buffer in module._buffers.items():
            if buffer is not None and name not in module._non_persistent_buffers_set:
                buffers[f"{module_name}.{name}" if module_name else name] = buffer
    return {**buffers, **state_dict}


def restore_model_code(model, output_dir: str) -> None:
    """Point a checkpoint's `auto_map` and code files at the model's own class.

    FSDP2 (torch 2.x `fully_shard`) swaps a sharded model's class for a generated subclass defined in torch, and
    `save_pretrained` then copies torch's FSDP sources and names that subclass in `auto_map`. Put back our
    modeling files instead.
    """
    from transformers.dynamic_module_utils import custom_object_save, get_relative_import_files

    from .fileio import write_json

    origin = next((cls for cls in type(model).__mro__ if "_auto_class" in vars(cls)), None)
    if origin is None or origin is type(model):
        return
    wrapper_file = sys.modules[type(model).__module__].__file__
    for path in [wrapper_file, *get_relative_import_files(wrapper_file)]:
        copied = os.path.join(output_dir, os.path.basename(path))
        if os.path.isfile(copied):
            os.remove(copied)
    config_path = os.path.join(output_dir, "config.json")
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    config.setdefault("auto_map", {}).pop(origin._auto_class, None)
    custom_object_save(object.__new__(origin), output_dir, config=config)
    write_json(config_path, config, sort_keys=True)
