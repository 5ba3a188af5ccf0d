"""Find the checkpoint to resume from, skipping any a crash left half-written.

The Trainer writes a checkpoint's weights, optimizer, scheduler and RNG states first and `trainer_state.json`
last, so a checkpoint is complete when that file parses and the weights it points to are whole. A
safetensors file is whole when its length matches its own header; a DeepSpeed checkpoint when the
`latest` tag names an existing folder.
"""

import json
import logging
import os
import re

from ..errors import UserError
from ..fileio import safetensors_problem

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
RESUME_LAST = ("last", "latest", "true", "auto")


def _weights_problem(path: str) -> str | None:
    """None when the checkpoint holds complete weights, else what is wrong."""
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(single):
        return None if safetensors_problem(single) is None else "model.safetensors is truncated"
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as handle:
                shards = set(json.load(handle)["weight_map"].values())
        except (OSError, ValueError, KeyError):
            return "model.safetensors.index.json is unreadable"
        broken = sorted(s for s in shards if safetensors_problem(os.path.join(path, s)) is not None)
        return f"shard(s) {', '.join(broken)} missing or truncated" if broken else None
    latest = os.path.join(path, "latest")
    if os.path.isfile(latest):
        with open(latest, encoding="utf-8") as handle:
            tag = handle.read().strip()
        return None if tag and os.path.isdir(os.path.join(path, tag)) else f"DeepSpeed tag '{tag}' has no folder"
    if any(name.startswith("pytorch_model_fsdp") for name in os.listdir(path)):
        return None
    if os.path.isfile(os.path.join(path, "pytorch_model.bin")):
        return None
    return "no model weights"


def checkpoint_problem(path: str) -> str | None:
    """None when `path` is a complete Trainer checkpoint, else a short reason it is not."""
    state = os.path.join(path, "trainer_state.json")
    try:
        with open(state, encoding="utf-8") as handle:
            json.load(handle)["global_step"]
    except FileNotFoundError:
        return "no trainer_state.json (the save did not finish)"
    except (OSError, ValueError, KeyError):
        return "trainer_state.json is truncated or unreadable"
    return _weights_problem(path)


def list_checkpoints(output_dir: str) -> list[str]:
    """Checkpoint folders of `output_dir`, oldest step first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(output_dir) if (m := CHECKPOINT_PATTERN.match(name))]
    return [os.path.join(output_dir, name) for _, name in sorted(found)
            if os.path.isdir(os.path.join(output_dir, name))]


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint; newer incomplete ones are reported and skipped."""
    for path in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("skipping incomplete checkpoint %s: %s", path, problem)
    return None


def discard_incomplete_checkpoints(output_dir: str) -> list[str]:
    """Remove the checkpoints newer than the newest complete one (what a failed save left); return them."""
    import shutil

    complete = last_complete_checkpoint(output_dir)
    checkpoints = list_checkpoints(output_dir)
    newer = checkpoints[checkpoints.index(complete) + 1:] if complete else checkpoints
    broken = [path for path in newer if checkpoint_problem(path) is not None]
    for path in broken:
        shutil.rmtree(path, ignore_errors=True)
    return broken


def resolve_resume(resume_from_checkpoint: str | None, output_dir: str) -> str | None:
    """The checkpoint to resume from, or None for a fresh run.

    `--resume_from_checkpoint PATH` resumes from PATH; `last` (or `latest`, `true`, `auto`) from the newest
    complete checkpoint of --output_dir (`auto` starts fresh when there is none). Without the flag, an output
    directory that already holds checkpoints is refused rather than silently mixed with a new run.
    """
    if resume_from_checkpoint and resume_from_checkpoint.lower() in RESUME_LAST:
        path = last_complete_checkpoint(output_dir)
        if path is None and resume_from_checkpoint.lower() != "auto":
            raise UserError(f"{output_dir}: no complete checkpoint to resume from; drop --resume_from_checkpoint")
        return path
    if resume_from_checkpoint:
        if not os.path.isdir(resume_from_checkpoint):
            raise UserError(f"{resume_from_checkpoint}: no such checkpoint directory")
        problem = checkpoint_problem(resume_from_checkpoint)
        if problem is not None:
            raise UserError(f"{resume_from_checkpoint}: incomplete checkpoint ({problem}); "
                            "use --resume_from_checkpoint last to pick the newest complete one")
        return resume_from_checkpoint
    existing = list_checkpoints(output_dir)
    if existing:
        raise UserError(
            f"{output_dir} already holds {os.path.basename(existing[-1])}; pass --resume_from_checkpoint last "
            "to continue that run, or choose another --output_dir"
        )
    return None
