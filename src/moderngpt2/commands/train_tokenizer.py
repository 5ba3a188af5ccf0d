"""`moderngpt2 train-tokenizer`: train a byte-level BPE or unigram tokenizer on text and save it."""

import sys

from ..arguments import SourceArguments, parse_command
from ..data.sources import iter_texts
from ..tokenization import TokenizerTrainingArguments, tokenizer_fingerprint, train_and_save_tokenizer

DEFAULT_C4_LANGS = ["en", "ja", "ko", "zh"]
DESCRIPTION = ("Train a byte-level BPE (default) or unigram tokenizer that AutoTokenizer loads. Without --input it "
               "streams multilingual C4 (en ja ko zh).")


def main(argv: list[str]) -> int:
    source, training = parse_command("moderngpt2 train-tokenizer", [SourceArguments, TokenizerTrainingArguments],
                                     argv, description=DESCRIPTION)
    if not source.input and not source.c4_langs:
        source.c4_langs = DEFAULT_C4_LANGS
        print(f"no --input: streaming C4 ({' '.join(DEFAULT_C4_LANGS)}) from {source.c4_dataset}", file=sys.stderr)
    texts = iter_texts(source.source_specs(), source.text_field, source.on_bad_record, source.max_input_lines_total,
                       c4_dataset=source.c4_dataset, split=source.dataset_split)
    tokenizer = train_and_save_tokenizer(texts, training)
    roles = ", ".join(f"{role}={getattr(tokenizer, role)}({getattr(tokenizer, role + '_id')})"
                      for role in ("bos_token", "eos_token", "unk_token", "pad_token"))
    print(f"wrote {training.model_type} tokenizer to {training.output_dir}: {len(tokenizer)} tokens; {roles}; "
          f"fingerprint {tokenizer_fingerprint(tokenizer)}")
    return 0
