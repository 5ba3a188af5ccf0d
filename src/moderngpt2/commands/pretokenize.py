"""`moderngpt2 pretokenize`: raw text -> Parquet (or Megatron) shards of token blocks, with a manifest."""

import os
import sys
from collections import Counter

from ..arguments import SourceArguments, TokenizerArguments, parse_command
from ..data.layout import MANIFEST
from ..data.pretokenize import PretokenizeArguments, pretokenize
from ..data.sources import describe_skipped

DESCRIPTION = ("Tokenize text into fixed-length blocks: Parquet shards (default) or Megatron .bin/.idx, with a "
               "held-out validation split and a manifest. Resumable: run it again after a crash.")


def summary_lines(manifest: dict) -> list[str]:
    """What each split holds, a warning for a split `train` could not use, and what was skipped or dropped."""
    lines = []
    for split, entry in manifest["splits"].items():
        lines.append(f"{split}: {entry['documents']:,} documents, {entry['tokens']:,} tokens, {entry['blocks']:,} "
                     f"blocks of {manifest['block_size']} ({len(entry['shards'])} files; "
                     f"{entry['dropped_tail_tokens']} tail tokens dropped)")
        wanted = split == "train" or manifest["validation"]["percentage"] > 0 or manifest["eval_inputs"]
        if entry["blocks"] == 0 and (entry["documents"] or wanted):
            lines.append(f"warning: the {split} split holds no complete block ({entry['documents']} documents, "
                         f"{entry['tokens']} tokens); `moderngpt2 train` needs one: use more text, a larger "
                         "--validation_split_percentage or --eval_input, or a smaller --block_size")
    if manifest["skipped_records"]:
        lines.append(f"skipped records: {describe_skipped(Counter(manifest['skipped_records']))}")
    if manifest["overlap_dropped_documents"]:
        lines.append(f"training documents dropped as copies of evaluation documents: "
                     f"{manifest['overlap_dropped_documents']}")
    return lines


def main(argv: list[str]) -> int:
    tokenizer, source, settings = parse_command(
        "moderngpt2 pretokenize", [TokenizerArguments, SourceArguments, PretokenizeArguments], argv,
        description=DESCRIPTION)
    manifest = pretokenize(tokenizer, source, settings)
    for line in summary_lines(manifest):
        print(line, file=sys.stderr if line.startswith("warning:") else sys.stdout)
    print(f"wrote {os.path.join(settings.output_dir, MANIFEST)}")
    return 0
