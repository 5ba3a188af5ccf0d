"""The process entry point: exit codes, and the exit of a distributed rank (exit handlers once, then os._exit)."""

import os
import subprocess
import sys

import pytest

SCRIPT = """
import atexit, sys
atexit.register(lambda: print("exit handlers ran", flush=True))
sys.argv = ["moderngpt2", *sys.argv[1:]]
from moderngpt2.cli import entry_point
entry_point()
print("not reached")
"""


def run_entry(*args: str, world_size: str | None):
    env = {key: value for key, value in os.environ.items() if key not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    if world_size is not None:
        env["WORLD_SIZE"] = world_size
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("world_size", [None, "2"])
def test_exit_codes_output_and_exit_handlers(world_size, tmp_path):
    done = run_entry("info", "--model_size_name", "tiny", world_size=world_size)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2,171,456" in done.stdout  # the tiny preset's count, printed in full before the exit
    assert done.stdout.count("exit handlers ran") == 1 and "not reached" not in done.stdout

    mistake = run_entry("info", "--model", str(tmp_path / "missing"), world_size=world_size)
    assert mistake.returncode == 2
    assert mistake.stderr.startswith("moderngpt2 info: error:") and len(mistake.stderr.splitlines()) == 1
    assert mistake.stdout.count("exit handlers ran") == 1
