"""Names shared by the writers and readers of pretokenized data: file names and format identifiers."""

import os

MANIFEST = "manifest.json"
FORMAT = "moderngpt2-pretokenized"
PER_LAYER_FORMAT = "moderngpt2-per-layer-stream"
PROGRESS_PREFIX = ".pretokenize-progress-"  # + checkpoint number + ".json"
EVAL_DIGESTS = ".eval-digests.partial"
SPLITS = ("train", "validation")
MAIN_COLUMN = "input_ids"
PER_LAYER_COLUMN = "per_layer_input_ids"


def progress_files(out: str) -> list[str]:
    """Checkpoint files of an unfinished pretokenize run in ``out``, oldest first."""
    if not os.path.isdir(out):
        return []
    names = [n for n in os.listdir(out) if n.startswith(PROGRESS_PREFIX) and n.endswith(".json")]
    return [os.path.join(out, n) for n in sorted(names)]
