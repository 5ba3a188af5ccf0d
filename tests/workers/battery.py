"""Helpers of the bad-input battery: run the real `moderngpt2` command line in a subprocess and check how it
fails (exit status 2, one line on stderr that names the culprit, no traceback) and that it lost nothing."""

import contextlib
import hashlib
import os
import subprocess
import sys
from pathlib import Path

from train_assets import TINY_MODEL_FLAGS, cli_env

CLI = [sys.executable, "-m", "moderngpt2.cli"]


def run_cli(*args, timeout: float = 300, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=cli_env(**(env or {})), cwd=cwd)


def start_cli(*args, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(**(env or {})))


def error_line(result: subprocess.CompletedProcess, *words: str, status: int = 2) -> str:
    """The single error line of a failed command, after checking the status, the absence of a traceback and
    that the line names each of `words` (case-insensitive)."""
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr[-3000:]
    assert result.returncode == status, (result.returncode, result.stderr[-3000:])
    lines = [line for line in result.stderr.splitlines() if "error:" in line or "interrupted" in line]
    assert len(lines) == 1, result.stderr[-3000:]
    line = lines[0]
    assert line.startswith("moderngpt2 "), line
    for word in words:
        assert word.lower() in line.lower(), (word, line)
    return line


def snapshot(root) -> dict:
    """{relative path: sha256} of every file under root: to prove that nothing written was changed."""
    root = Path(root)
    if not root.exists():
        return {}
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def partial_files(root) -> list[str]:
    """Temporary files left under root by an interrupted writer (none may stay under a final name either)."""
    return [str(path) for path in Path(root).rglob("*") if path.name.endswith(".tmp")]


def tiny_train_flags(tokenizer, data, output_dir, *extra) -> list[str]:
    return ["--tokenizer_path", tokenizer, "--pre_tokenized_dataset_path", data, "--output_dir", output_dir,
            *TINY_MODEL_FLAGS, "--per_device_train_batch_size", "4", "--logging_steps", "1", "--report_to", "none",
            "--eval_strategy", "no", "--save_strategy", "no", "--dataloader_num_workers", "0", "--disable_tqdm",
            "true", "--seed", "0", *map(str, extra)]


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str, read_only: bool = False):
    """A real filesystem of `size` (full disks) or a read-only one, mounted at `path`; skips where mounting is
    not permitted (not root, or a container without the capability)."""
    import pytest

    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                             text=True) if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip("mounting a tmpfs needs root and the mount capability "
                    f"({mounted.stderr.strip() if mounted else 'not root'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, capture_output=True)
