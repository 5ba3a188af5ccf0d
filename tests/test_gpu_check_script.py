"""`scripts/gpu_check.sh` dry-run on the CPU with tiny shapes: every part runs, every result file exists and parses,
so the one GPU run it is written for cannot fail on a typo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "scripts" / "gpu_check.sh"
BENCHMARKS = ("train-small", "train-small-nosoftcap", "generate-small", "train-medium", "train-medium-nosoftcap")
TESTS = ("tests-gpu", "tests-model")


@pytest.mark.slow
def test_tiny_dry_run_writes_every_result(tmp_path):
    out = tmp_path / "results"
    bin_dir = os.path.dirname(sys.executable)  # the `moderngpt2` entry point of this environment
    # the limits are sized for the GPU run; here the other pytest worker shares the two cores
    env = {**os.environ, "GPU_CHECK_TINY": "1", "GPU_CHECK_TIME_SCALE": "3", "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "every part succeeded: yes" in done.stdout

    for name in BENCHMARKS + TESTS:
        status = json.loads((out / f"{name}.status.json").read_text())
        assert status["exit_status"] == 0 and not status["timed_out"] and status["part"] == name, status
    for name in TESTS:
        assert (out / f"{name}.xml").read_text().startswith("<?xml")
    environment = json.loads((out / "environment.json").read_text())
    assert environment["torch"] and environment["transformers"] and environment["device_count"] == 0

    for name in BENCHMARKS:
        report = json.loads((out / f"{name}.json").read_text())
        assert report["environment"]["device_type"] == "cpu"
        if name.startswith("train"):
            expected = {"ours", "llama-sdpa"} if name.endswith("nosoftcap") else {
                "ours", "ours-ple", "gemma2-eager", "gemma2-flex", "llama-sdpa"}
            assert set(report["models"]) == expected
            assert report["settings"]["size"] == "tiny" and report["models"]["ours"]["tokens_per_s"] > 0
            assert (report["settings"]["attn_softcap"] is None) == name.endswith("nosoftcap")
        else:
            assert set(report["results"]) == {"1", "2"}
            assert all(result["tokens_per_s"] > 0 for result in report["results"]["1"].values())
    log = (out / "gpu_check.log").read_text()
    assert "nvidia-smi: not found" in log and "torch" in log
