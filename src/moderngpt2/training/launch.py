"""What launchers put on our command line and in our environment, and what one process needs without them.

- DeepSpeed's launcher (`deepspeed $(which moderngpt2) train ...`) adds `--local_rank=N` as the first
  argument, before the subcommand; torch.distributed.launch adds it too. Both also set LOCAL_RANK (with
  RANK, WORLD_SIZE and the rendezvous address), which is what the Trainer reads, so the flag is taken off
  the line wherever it stands.
- A DeepSpeed run in one process without a launcher has no rendezvous variables, and DeepSpeed then looks
  for MPI to discover its rank (and fails without mpi4py). One process is rank 0 of 1: say so.
"""

import os
import socket

LOCAL_RANK_FLAGS = ("--local_rank", "--local-rank")
RENDEZVOUS_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def take_local_rank(argv: list[str]) -> list[str]:
    """`argv` without `--local_rank N` / `--local_rank=N` (the launcher's environment holds the rank)."""
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
    """Make a process started without a launcher rank 0 of a world of 1 (for DeepSpeed's rendezvous)."""
    if launched():
        return
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(_free_port())}
    for name, value in defaults.items():
        os.environ.setdefault(name, value)
